"""Throughput of the unit-of-work layer against hand-written sessions, under Hypercorn.

A benchmark, not a timed test: it always exits 0 and prints its verdicts.

For each database (a SQLite file in a temporary directory; PostgreSQL at
``BENCH_POSTGRES_URL``, by default ``postgresql+asyncpg://postgres@127.0.0.1:5432/bench``,
the database created if missing) it builds and seeds the ``bench_items`` table
with an engine of its own, serves ``bench.apps:layer_app()`` with one Hypercorn
worker, and drives ``GET /{layer,hand}/items/<random id>`` and
``POST /{layer,hand}/items`` with wrk. Then ``GET /nodb`` on the layer's app,
and on the service's whole ``create_app()``, each against a bare Quart app, each
app in its own Hypercorn process. ``bench/apps.py`` says what each side does and
why the comparison is fair.

The machine is small and shared, so the two sides of a comparison alternate:
after a warm-up of each, every round runs both, the order flipping each round
(A B, B A, ...) so that a slow drift of the machine weighs on both alike. The
verdict compares the medians of the rounds (A/B >= 0.97); the per-round ratios
and a bootstrap interval of the ratio are printed too, to show the noise.

Usage: ``python bench/uow.py [--quick] [--db sqlite|postgresql|all]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `bench` and `service` importable
    sys.path.insert(0, str(ROOT))

from bench.results import Result, Sample, print_table  # noqa: E402
from bench.servers import Server, serving  # noqa: E402 - importable once the path is set

ROWS = 1000
# Within the engine's default pool (pool_size=5): past it, QueuePool closes each
# overflow connection when it is returned, and both sides would mostly measure
# connection churn (a PostgreSQL backend forked per request). One Hypercorn
# worker is CPU-bound from two or three connections on already.
CONNECTIONS = 4
DEFAULT_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/bench"

GET_LUA = """\
-- GET <the URL's path><a random id in 1..rows>
local rows
function init(args)
  rows = tonumber(args[1])
end
function request()
  return wrk.format("GET", wrk.path .. math.random(1, rows))
end
"""

POST_LUA = """\
wrk.method = "POST"
wrk.body = "{}"
wrk.headers["Content-Type"] = "application/json"
"""


@dataclass(frozen=True)
class Plan:
    rounds: int
    seconds: int
    warmup_seconds: int


FULL = Plan(rounds=7, seconds=3, warmup_seconds=2)
QUICK = Plan(rounds=3, seconds=2, warmup_seconds=1)


# --- database preparation -------------------------------------------------------------------


async def _ensure_postgres_database(url: str) -> None:
    from sqlalchemy import make_url, text
    from sqlalchemy.ext.asyncio import create_async_engine

    target = make_url(url)
    name = target.database
    if not name or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"{url}: expected a plain database name")
    admin = create_async_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as connection:
            exists = await connection.scalar(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
            )
            if not exists:
                await connection.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        await admin.dispose()


async def _prepare(url: str) -> None:
    """(Re)create ``bench_items`` with ``ROWS`` rows, on an engine of the driver's own."""
    from sqlalchemy import insert

    from bench.apps import TABLE
    from service.db import Model, make_engine

    if url.startswith("postgresql"):
        await _ensure_postgres_database(url)
    table = Model.metadata.tables[TABLE]
    engine = make_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(lambda sync: table.drop(sync, checkfirst=True))
            await connection.run_sync(lambda sync: table.create(sync))
            await connection.execute(
                insert(table), [{"name": f"item-{i}"} for i in range(1, ROWS + 1)]
            )
    finally:
        await engine.dispose()


async def _drop(url: str) -> None:
    from bench.apps import TABLE
    from service.db import Model, make_engine

    table = Model.metadata.tables[TABLE]
    engine = make_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(lambda sync: table.drop(sync, checkfirst=True))
    finally:
        await engine.dispose()


# --- load -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    """One side of a comparison: wrk against one URL of one server."""

    server: Server
    path: str
    script: Path
    args: tuple[str, ...] = ()


def _wrk(load: Load, seconds: int) -> tuple[Sample, list[str]]:
    url = load.server.base + load.path
    command = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--timeout", "10s"]
    command += ["-s", str(load.script), url]
    if load.args:
        command += ["--", *load.args]
    cpu_before = load.server.cpu_seconds()
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    cpu_after = load.server.cpu_seconds()
    out = done.stdout
    problems: list[str] = []
    if done.returncode != 0:
        problems.append(f"wrk exited {done.returncode}: {done.stderr.strip()}")
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    count = re.search(r"(\d+) requests in", out)
    if rate is None or count is None:
        problems.append(f"unexpected wrk output: {out!r} {done.stderr!r}")
        return Sample(0.0, None), problems
    for pattern in (r"Non-2xx or 3xx responses: \d+", r"Socket errors: [^\n]+"):
        found = re.search(pattern, out)
        if found:
            problems.append(f"{url}: {found.group(0)}")
    cpu_rate = None
    if cpu_before is not None and cpu_after is not None and cpu_after > cpu_before:
        cpu_rate = int(count.group(1)) / (cpu_after - cpu_before)
    return Sample(float(rate.group(1)), cpu_rate), problems


def compare(
    database: str, endpoint: str, labels: tuple[str, str], layer: Load, base: Load, plan: Plan
) -> Result:
    """Warm both up, then ``plan.rounds`` rounds of both, the order flipping each round."""
    result = Result(database, endpoint, labels[0], labels[1])
    print(f"\n{database} {endpoint}: A = {labels[0]} {layer.path}, B = {labels[1]} {base.path}")
    print(f"           req/s: {'A':>9} {'B':>9}  A/B   | req/CPU-s: {'A':>8} {'B':>8}  A/B")
    for load in (layer, base):
        _, problems = _wrk(load, plan.warmup_seconds)
        result.problems += problems
    for index in range(plan.rounds):
        order = [(layer, result.layer), (base, result.base)]
        if index % 2:
            order.reverse()
        for load, samples in order:
            sample, problems = _wrk(load, plan.seconds)
            result.problems += problems
            samples.append(sample)
        a, b = result.layer[-1], result.base[-1]
        cpu = "n/a"
        if a.cpu_rate and b.cpu_rate:
            cpu = f"{a.cpu_rate:8.0f} {b.cpu_rate:8.0f}  {a.cpu_rate / b.cpu_rate:.3f}"
        print(
            f"  round {index + 1}: {a.rate:9.1f} {b.rate:9.1f}  {result.round_ratios[-1]:.3f} |"
            f"           {cpu}",
            flush=True,
        )
    for problem in result.problems:
        print(f"  ! {problem}", flush=True)
    return result


# --- phases ---------------------------------------------------------------------------------


def bench_database(
    database: str, url: str, plan: Plan, work: Path, scripts: dict[str, Path]
) -> list[Result]:
    asyncio.run(_prepare(url))
    results: list[Result] = []
    try:
        with serving(
            f"layer-{database}",
            "bench.apps:layer_app()",
            {"DATABASE_URL": url},
            work,
            "/layer/items/1",
        ) as server:
            labels = ("layer", "hand")
            results.append(
                compare(
                    database,
                    "GET /items/<id>",
                    labels,
                    Load(server, "/layer/items/", scripts["get"], (str(ROWS),)),
                    Load(server, "/hand/items/", scripts["get"], (str(ROWS),)),
                    plan,
                )
            )
            results.append(
                compare(
                    database,
                    "POST /items",
                    labels,
                    Load(server, "/layer/items", scripts["post"]),
                    Load(server, "/hand/items", scripts["post"]),
                    plan,
                )
            )
    finally:
        asyncio.run(_drop(url))
    return results


def bench_nodb(plan: Plan, work: Path, scripts: dict[str, Path]) -> list[Result]:
    """``GET /nodb``: the layer's app, then the service's whole app, each against bare Quart."""
    # The apps with a Database need a DATABASE_URL to start serving; /nodb never connects.
    env = {"DATABASE_URL": f"sqlite+aiosqlite:///{work / 'nodb.db'}"}
    results: list[Result] = []
    with serving("plain-nodb", "bench.apps:plain_app()", env, work, "/nodb") as plain:
        for label, target in (("layer", "layer_app()"), ("service", "service_app()")):
            with serving(f"{label}-nodb", f"bench.apps:{target}", env, work, "/nodb") as server:
                results.append(
                    compare(
                        "none",
                        "GET /nodb",
                        (label, "plain"),
                        Load(server, "/nodb", scripts["plain"]),
                        Load(plain, "/nodb", scripts["plain"]),
                        plan,
                    )
                )
    return results


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwind, so that the servers are stopped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    parser.add_argument("--db", choices=["sqlite", "postgresql", "all"], default="all")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk); nothing measured")
        return 0
    signal.signal(signal.SIGTERM, _on_sigterm)
    started = time.monotonic()
    print(
        f"{plan.rounds} rounds of {plan.seconds}s per side after a {plan.warmup_seconds}s "
        f"warm-up; wrk -t1 -c{CONNECTIONS}; one Hypercorn worker; {os.cpu_count()} CPUs"
    )
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="bench-uow-") as tmp:
        work = Path(tmp)
        scripts = {"get": work / "get.lua", "post": work / "post.lua", "plain": work / "plain.lua"}
        scripts["get"].write_text(GET_LUA)
        scripts["post"].write_text(POST_LUA)
        scripts["plain"].write_text("")
        databases: list[tuple[str, str]] = []
        if args.db in ("sqlite", "all"):
            databases.append(("sqlite", f"sqlite+aiosqlite:///{work / 'bench.db'}"))
        if args.db in ("postgresql", "all"):
            databases.append(
                ("postgresql", os.environ.get("BENCH_POSTGRES_URL", DEFAULT_POSTGRES_URL))
            )
        for database, url in databases:
            try:
                results += bench_database(database, url, plan, work, scripts)
            except Exception as error:  # e.g. PostgreSQL unreachable: measure the rest
                print(f"\n{database}: skipped, {type(error).__name__}: {error}", flush=True)
        results += bench_nodb(plan, work, scripts)
    print_table(results)
    print(f"\ntotal {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
