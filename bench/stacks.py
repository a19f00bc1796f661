"""The layer against the peers and the raw-driver ceiling: five stacks, the same endpoints,
one run (issue 21).

A benchmark, not a timed test: it prints its table, writes it to
``docs/benchmarks/results/stacks.md``, and exits 0.

The stacks (``bench/stack_apps/``, whose docstrings say exactly what each does):

- layer: a plain Quart app with ``Database(app)``, ``await Item.get(i)`` and
  ``await Item(name=...).save()``, on Hypercorn;
- layer A/A: a second, identical layer server: the ratio layer / layer A/A is
  this run's noise, measured in the same rotation;
- hand-written: the same plain Quart app without the layer, ``async with Session()
  as s, s.begin():`` in each handler, on Hypercorn;
- FastAPI + advanced-alchemy, in autocommit mode, on Hypercorn;
- Django 6: ``ATOMIC_REQUESTS=True``, persistent connections, plain sync views,
  gunicorn with 1 worker and 8 threads (gthread), from its own venv on Python 3.12
  (``.venv-django``, which the Makefile makes; skipped when it is missing);
- ceiling: a bare ASGI callable on Hypercorn running the same SQL in an explicit
  transaction, on an asyncpg pool or one aiosqlite writer and 4 readers.

Each serves ``GET /items/<id>`` (one row by primary key, a random one of 1,000),
``POST /items`` (one row inserted and committed, 201) and ``GET /nodb`` (no
database), with one server process and a database of its own: a SQLite file in
a temporary directory, or a PostgreSQL database ``<BENCH_POSTGRES_URL's>_stacks_<stack>``
(``.../bench`` by default), made anew and dropped afterwards. Same durability on
all: SQLite in WAL with ``synchronous=FULL`` (checked to be the layer's) and
writes that take the lock at ``BEGIN IMMEDIATE``; PostgreSQL's default
``synchronous_commit``. The pooled stacks keep 10 connections, Django one per thread.

For each database all its servers are up at once; each route is measured by
``wrk -t1 -c32`` bursts rotating between the servers, the order reversed every
other round (``bench/harness/rounds.py``): after a warm-up, the medians of 5 rounds
of 3 s (``--quick``: 2 rounds of 1 s). ``GET /nodb`` is measured once, on the first
database's servers. Printed and written: req/s and p99 per stack and route, the
ratios of the layer to each other stack with the range of their per-round ratios,
and issue 21's targets against the figures.

Usage: ``python bench/stacks.py [--quick] [--rounds N] [--seconds S] [--db sqlite|postgresql|all]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `bench` and `service` importable
    sys.path.insert(0, str(ROOT))

from sqlalchemy import Column, Integer, MetaData, String, Table, insert, text  # noqa: E402
from sqlalchemy.ext.asyncio import create_async_engine  # noqa: E402

from bench import harness  # noqa: E402
from bench.harness import Plan, Rotation, Server, Target  # noqa: E402
from bench.stacks_report import report  # noqa: E402

FULL = Plan(rounds=5, seconds=3, warmup_seconds=2)
QUICK = Plan(rounds=2, seconds=1, warmup_seconds=1, quick=True)
ROWS = 1000
DJANGO_VENV = Path(os.environ.get("DJANGO_VENV", ROOT / ".venv-django"))

READ_LUA = """\
-- GET /items/<a random id in 1..rows>
local rows
function init(args)
  rows = tonumber(args[1])
end
function request()
  return wrk.format("GET", "/items/" .. math.random(1, rows))
end
"""
WRITE_LUA = """\
wrk.method = "POST"
wrk.body = '{"name": "bench"}'
wrk.headers["Content-Type"] = "application/json"
"""


@dataclass(frozen=True)
class Stack:
    label: str
    key: str
    """Names its database and its log."""
    target: str | tuple[str, ...]
    """Hypercorn's target, or a whole command line (``{port}``: the server's port)."""
    env: tuple[tuple[str, str], ...] = ()


def all_stacks(*, django: bool = True) -> list[Stack]:
    """The stacks in rotation order; Django when asked for and its venv exists."""
    stacks = [
        Stack("layer", "layer", "bench.stack_apps.layer:app"),
        Stack("hand-written", "hand", "bench.stack_apps.hand:app"),
        Stack("FastAPI + AA", "fastapi", "bench.stack_apps.fastapi_aa:app"),
    ]
    gunicorn = DJANGO_VENV / "bin" / "gunicorn"
    if django and gunicorn.exists():
        command: tuple[str, ...] = (str(gunicorn), "-w", "1", "-k", "gthread", "--threads", "8")
        command += ("-b", "127.0.0.1:{port}", "bench.stack_apps.django_items.wsgi:application")
        settings = ("DJANGO_SETTINGS_MODULE", "bench.stack_apps.django_items.settings")
        stacks.append(Stack("Django", "django", command, (settings,)))
    elif django:
        print(f"no {gunicorn}: Django skipped (`make bench-stacks` makes its venv)")
    stacks.append(Stack("ceiling", "ceiling", "bench.stack_apps.ceiling:app"))
    # Last: within each round, its burst is the farthest from the first layer server's.
    stacks.append(Stack("layer A/A", "layer_aa", "bench.stack_apps.layer:app"))
    return stacks


@dataclass
class Run:
    plan: Plan
    work: Path
    scripts: dict[str, Path]
    stacks: list[Stack]
    rotations: dict[tuple[str, str], Rotation] = field(default_factory=dict)
    """By (database, route): ``("PostgreSQL", "read")``, ..., ``("none", "nodb")``."""
    skipped: list[str] = field(default_factory=list)


# --- databases ------------------------------------------------------------------------------


async def prepare(url: str) -> None:
    """``items`` made anew with ``ROWS`` rows (PostgreSQL: in a database made anew)."""
    if url.startswith("postgresql"):
        await harness.recreate_postgres_database(url)
    metadata = MetaData()
    items = Table(
        "items",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("name", String(100), nullable=False),
    )
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            if url.startswith("sqlite"):
                await connection.execute(text("PRAGMA journal_mode = WAL"))
            await connection.run_sync(metadata.create_all)
            await connection.execute(insert(items), [{"name": f"item-{i}"} for i in range(ROWS)])
    finally:
        await engine.dispose()


async def _layer_synchronous(url: str) -> int:
    """``PRAGMA synchronous`` on a connection of the layer's own engine (2 is FULL)."""
    from service.db import make_engine

    engine = make_engine(url)
    try:
        async with engine.connect() as connection:
            return int(await connection.scalar(text("PRAGMA synchronous")) or 0)
    finally:
        await engine.dispose()


# --- servers ------------------------------------------------------------------------------


def _check(server: Server, label: str) -> None:
    """Every stack answers the same contract: a read, a write and the route without database."""

    def call(method: str, path: str, body: bytes | None = None) -> tuple[int, object]:
        request = urllib.request.Request(server.base + path, data=body, method=method)
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())

    answers = [
        call("GET", "/items/1"),
        call("POST", "/items", b'{"name": "check"}'),
        call("GET", "/nodb"),
    ]
    expected = [(200, {"id": 1, "name": "item-0"}), (201, "check"), (200, {"ok": True})]
    made = answers[1][1]
    answers[1] = (answers[1][0], made.get("name") if isinstance(made, dict) else made)
    if answers != expected:
        raise RuntimeError(f"{label} answered {answers}, expected {expected}")


def _serve(run: Run, database: str, urls: dict[str, str], stack: ExitStack) -> dict[str, Server]:
    servers = {}
    for s in run.stacks:
        env = {"DATABASE_URL": urls[s.key], **dict(s.env)}
        server = Server(f"{s.key}-{database}", s.target, env, run.work)
        stack.callback(server.stop)
        servers[s.label] = server
    for s in run.stacks:
        servers[s.label].wait_ready("/nodb", timeout=60)
        _check(servers[s.label], s.label)
    return servers


def _measure(run: Run, database: str, servers: dict[str, Server]) -> None:
    read = (str(ROWS),)
    routes = [
        ("read", "/", run.scripts["read"], read),
        ("write", "/items", run.scripts["write"], ()),
    ]
    if not any(route == "nodb" for _, route in run.rotations):
        routes.append(("nodb", "/nodb", run.scripts["nodb"], ()))
    for route, path, script, args in routes:
        targets = [Target(label, server, path, script, args) for label, server in servers.items()]
        where = "none" if route == "nodb" else database
        title = f"{database} {route}" if route != "nodb" else "no database (GET /nodb)"
        run.rotations[(where, route)] = harness.rotate(title, targets, run.plan)


def bench_database(run: Run, database: str) -> None:
    if database == "SQLite":
        urls = {
            s.key: f"sqlite+aiosqlite:///{run.work / f'sqlite-{s.key}' / 'items.db'}"
            for s in run.stacks
        }
        for url in urls.values():
            Path(url.removeprefix("sqlite+aiosqlite:///")).parent.mkdir()
    else:
        urls = {s.key: harness.postgres_url(f"stacks_{s.key}") for s in run.stacks}
    try:
        for url in urls.values():
            asyncio.run(prepare(url))
        if database == "SQLite":
            synchronous = asyncio.run(_layer_synchronous(urls["layer"]))
            if synchronous != 2:
                raise RuntimeError(f"the layer's SQLite runs synchronous={synchronous}, not FULL")
        with ExitStack() as stack:
            servers = _serve(run, database.lower(), urls, stack)
            _measure(run, database, servers)
    finally:
        if database == "PostgreSQL":
            for url in urls.values():
                asyncio.run(harness.drop_postgres_database(url))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    harness.add_plan_options(parser, FULL, QUICK)
    parser.add_argument("--db", choices=["sqlite", "postgresql", "all"], default="all")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk); nothing measured")
        return 0
    harness.stop_servers_on_sigterm()
    started = time.monotonic()
    plan = harness.plan_from(args, FULL, QUICK)
    print(f"{plan}; wrk -t1 -c32; one server process each; {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="bench-stacks-") as tmp:
        work = Path(tmp)
        scripts = {
            "read": harness.write_script(work, "read", READ_LUA),
            "write": harness.write_script(work, "write", WRITE_LUA),
            "nodb": harness.write_script(work, "nodb", ""),
        }
        run = Run(plan, work, scripts, all_stacks())
        databases = {"postgresql": ["PostgreSQL"], "sqlite": ["SQLite"]}
        for database in databases.get(args.db, ["PostgreSQL", "SQLite"]):
            try:
                bench_database(run, database)
            except Exception as error:  # e.g. PostgreSQL unreachable: measure the rest
                run.skipped.append(f"{database}: {type(error).__name__}: {error}")
                print(f"\n{database}: skipped, {run.skipped[-1]}", flush=True)
        report(run.rotations, [s.label for s in run.stacks], plan, run.skipped)
    print(f"\ntotal {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
