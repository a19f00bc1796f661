"""Issue 23: what the metrics cost, on GET and on a deposit: metrics on against off, one run.

A benchmark, not a timed test: it prints its figures and exits 0.

Two servers of this checkout, one Hypercorn worker each, each on a database of its
own seeded with the same users (``bench/seed.py``): one with ``METRICS_PORT`` set
(every request, unit of work, pooled connection and SQLite writer counted, in
prometheus-client's multiprocess mode, as in production), one without. wrk drives
``GET /accounts/{id}`` and deposits in alternating bursts (``bench/load.py``); printed:
the medians, on/off, and the cost (1 - on/off). Target: at most 3% on both. The
metrics side is scraped once at the end, to show it counted what it was sent.

SQLite always; PostgreSQL too with ``BENCH_POSTGRES_URL`` (databases ``<name>_on``
and ``<name>_off`` on its server, made anew). Traces are not measured: they are off
unless configured, and then their cost is the exporter's.

Usage: ``python bench/metrics_cost.py [--quick] [--rounds N] [--seconds S]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `bench` importable
    sys.path.insert(0, str(ROOT))

from bench import load  # noqa: E402 - importable once the path is set
from bench.ledger_load import prepare_database  # noqa: E402
from bench.load import Comparison, Side  # noqa: E402
from bench.seed import seed, write_customers  # noqa: E402
from bench.servers import Server, free_port  # noqa: E402

TARGET_COST = 0.03
REQUESTS = [("GET /accounts/{id}", "get"), ("deposit", "deposit")]


def _databases(work: Path) -> list[tuple[str, str, str]]:
    found = [("SQLite", f"sqlite+aiosqlite:///{work}/on.db", f"sqlite+aiosqlite:///{work}/off.db")]
    postgres = os.environ.get("BENCH_POSTGRES_URL")
    if postgres:
        found.append(("PostgreSQL", f"{postgres}_on", f"{postgres}_off"))
    return found


def _scraped(port: int) -> float:
    """The metrics side's count of answered requests, from its endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("service_http_requests_total{")
    )


def run(database: str, on_url: str, off_url: str, plan: load.Plan, work: Path) -> list[Comparison]:
    asyncio.run(prepare_database(on_url))
    asyncio.run(prepare_database(off_url))
    metrics_port = free_port()
    on = Server(
        f"metrics-on-{database}",
        "service.app:app",
        {"DATABASE_URL": on_url, "METRICS_PORT": str(metrics_port), "ACCESS_LOG": "false"},
        work,
        options=("--bind", f"127.0.0.1:{metrics_port}"),
    )
    off = Server(
        f"metrics-off-{database}",
        "service.app:app",
        {"DATABASE_URL": off_url, "ACCESS_LOG": "false"},
        work,
    )
    try:
        for server in (on, off):
            server.wait_ready("/readyz")
        on_users, off_users = asyncio.run(seed([on.base, off.base], tag=database.lower()))
        script = load.write_script(work)
        a = Side("metrics on", on, write_customers(on_users, work / f"on-{database}.txt"))
        b = Side("metrics off", off, write_customers(off_users, work / f"off-{database}.txt"))
        results = [
            load.alternate(database, endpoint, mode, a, b, plan, script)
            for endpoint, mode in REQUESTS
        ]
        print(f"  the metrics side counted {_scraped(metrics_port):.0f} requests", flush=True)
        return results
    finally:
        on.stop()
        off.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    load.add_plan_options(parser)
    plan = load.plan_from(parser.parse_args())
    results: list[Comparison] = []
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as directory:
        for database, on_url, off_url in _databases(Path(directory)):
            results += run(database, on_url, off_url, plan, Path(directory))
    print("\nmetrics on / off (median req/s), one run; target: a cost of at most 3%")
    for result in results:
        cost = 1 - result.ratio
        verdict = "ok" if cost <= TARGET_COST else "OVER"
        print(
            f"  {result.database:10} {result.endpoint:20} on/off {result.ratio:.3f} "
            f"(rounds {result.noise})  cost {cost * 100:+.1f}%  {verdict}"
        )


if __name__ == "__main__":
    main()
