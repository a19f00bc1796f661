"""Issue 23: what the metrics cost, on GET and on a deposit: metrics on against off, one run.

A benchmark, not a timed test: it prints its figures, writes them to
``docs/benchmarks/results/metrics_cost.md``, and exits 0.

Two servers of this checkout, one Hypercorn worker each, each on a database of its
own seeded with the same users (``bench/seed.py``): one with ``METRICS_PORT`` set
(every request, unit of work, pooled connection and SQLite writer counted, in
prometheus-client's multiprocess mode, as in production), one without. wrk drives
``GET /accounts/{id}`` and deposits in alternating bursts (``bench/harness/rounds.py``:
after a warm-up, the medians of 7 rounds of 3 s; ``--quick``: 3 rounds of 2 s);
printed: the medians, on/off, and the cost (1 - on/off). Target: at most 3% on both.
The metrics side is scraped once at the end, to show it counted what it was sent.

SQLite always; PostgreSQL too with ``BENCH_POSTGRES_URL`` (databases
``<name>_metrics_on`` and ``<name>_metrics_off`` on its server, made anew). Traces are
not measured: they are off unless configured, and then their cost is the exporter's.

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

from bench import harness  # noqa: E402 - importable once the path is set
from bench.harness import Plan, Rotation, Server, Target, free_port  # noqa: E402
from bench.ledger import LUA  # noqa: E402
from bench.seed import seed, write_customers  # noqa: E402

FULL = Plan(rounds=7, seconds=3, warmup_seconds=2)
QUICK = Plan(rounds=3, seconds=2, warmup_seconds=1, quick=True)
TARGET_COST = 0.03
REQUESTS = [("GET /accounts/{id}", "get"), ("deposit", "deposit")]


def _databases(work: Path) -> list[tuple[str, str, str]]:
    found = [("SQLite", f"sqlite+aiosqlite:///{work}/on.db", f"sqlite+aiosqlite:///{work}/off.db")]
    if os.environ.get("BENCH_POSTGRES_URL"):
        on, off = harness.postgres_url("metrics_on"), harness.postgres_url("metrics_off")
        found.append(("PostgreSQL", on, off))
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


def run(database: str, on_url: str, off_url: str, plan: Plan, work: Path) -> list[Rotation]:
    asyncio.run(harness.prepare_database(on_url))
    asyncio.run(harness.prepare_database(off_url))
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
        script = harness.write_script(work, "ledger", LUA)
        on_file = write_customers(on_users, work / f"on-{database}.txt")
        off_file = write_customers(off_users, work / f"off-{database}.txt")
        results = [
            harness.rotate(
                f"{database} {endpoint}",
                [
                    Target("metrics on", on, "/", script, (mode, str(on_file))),
                    Target("metrics off", off, "/", script, (mode, str(off_file))),
                ],
                plan,
            )
            for endpoint, mode in REQUESTS
        ]
        print(f"  the metrics side counted {_scraped(metrics_port):.0f} requests", flush=True)
        return results
    finally:
        on.stop()
        off.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_plan_options(parser, FULL, QUICK)
    plan = harness.plan_from(parser.parse_args(), FULL, QUICK)
    results: list[Rotation] = []
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as directory:
        for database, on_url, off_url in _databases(Path(directory)):
            results += run(database, on_url, off_url, plan, Path(directory))
    rows = []
    for result in results:
        ratio = result.ratio("metrics on", "metrics off")
        cost = 1 - ratio
        verdict = "met" if cost <= TARGET_COST and not result.problems else "**not met**"
        rows.append(
            [
                result.title,
                f"{result.rate('metrics on'):,.0f}",
                f"{result.rate('metrics off'):,.0f}",
                f"{ratio:.3f} ({result.noise('metrics on', 'metrics off')})",
                f"{cost * 100:+.1f}%",
                verdict,
            ]
        )
    header = ["request", "on req/s", "off req/s", "on/off (per round)", "cost"]
    header.append(f"target <= {TARGET_COST:.0%}")
    problems = [p for r in results for p in r.problems]
    body = [harness.markdown_table(header, rows)]
    if problems:
        body += ["Problems:", "\n".join(f"- {p}" for p in problems)]
    how = (
        "Two servers of this checkout, one Hypercorn worker each, one with `METRICS_PORT` set "
        "and one without, on databases of their own seeded alike; `wrk -t1 -c32` in "
        f"alternating bursts: {plan}."
    )
    harness.write_results("metrics_cost", how, "\n\n".join(body), quick=plan.quick)


if __name__ == "__main__":
    main()
