"""What a save costs through the layer: this tree against a base commit, in one run.

Every flush and statement now passes through the layer's failure bookkeeping (a
savepoint contains its failure; a failure that cost earlier writes ends the unit
of work in an error). This measures what that costs a save, on SQLite and
PostgreSQL: the round trips of a unit of work with one save (statements,
BEGIN and COMMIT, counted by engine events), and by wall clock the median time of
a unit of work with one save and the time of one save among 300 in one unit.
Base and head run in processes of their own, alternating, round after round.

    python bench/save_cost.py [--base e05891a] [--rounds 5] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "benchmarks" / "results" / "save_cost.md"

WORKER = r"""
import asyncio, json, statistics, sys, time
from sqlalchemy import String, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Mapped, mapped_column
from service.db import Model, make_engine, unit_of_work


class BenchSaved(Model):
    __tablename__ = "bench_saved"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


async def main(url: str, count: int) -> None:
    engine = make_engine(url)
    async with engine.begin() as connection:
        await connection.run_sync(BenchSaved.__table__.drop, checkfirst=True)
        await connection.run_sync(BenchSaved.__table__.create)
    for number in range(50):  # warm-up
        async with unit_of_work(bind=engine):
            await BenchSaved(name="warm").save()
    trips = []
    count_trip = lambda *args, **kwargs: trips.append(1)
    for name in ("begin", "commit", "rollback", "before_cursor_execute"):
        event.listen(Engine, name, count_trip)
    async with unit_of_work(bind=engine):
        await BenchSaved(name="counted").save()
    for name in ("begin", "commit", "rollback", "before_cursor_execute"):
        event.remove(Engine, name, count_trip)
    units = []
    for number in range(count):
        started = time.perf_counter()
        async with unit_of_work(bind=engine):
            await BenchSaved(name=f"unit {number}").save()
        units.append(time.perf_counter() - started)
    started = time.perf_counter()
    async with unit_of_work(bind=engine):
        for number in range(count):
            await BenchSaved(name=f"save {number}").save()
    among = (time.perf_counter() - started) / count
    await engine.dispose()
    print(json.dumps({"round_trips": len(trips), "unit": statistics.median(units), "save": among}))


asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def _base_tree(commit: str, into: Path) -> Path:
    archive = subprocess.run(
        ["git", "archive", commit, "service"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def _run(tree: Path, url: str, count: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    env.pop("DATABASE_URL", None)
    finished = subprocess.run(
        [sys.executable, "-c", WORKER, url, str(count)],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    figures: dict[str, float] = json.loads(finished.stdout.strip().splitlines()[-1])
    return figures


def _databases(scratch: Path) -> dict[str, dict[str, str]]:
    databases = {
        "SQLite": {
            side: f"sqlite+aiosqlite:///{scratch / f'{side}.db'}" for side in ("base", "head")
        }
    }
    postgres = os.environ.get("BENCH_POSTGRES_URL")
    if postgres:
        databases["PostgreSQL"] = {side: f"{postgres}_save_{side}" for side in ("base", "head")}
    return databases


def _create_postgres(url: str) -> None:
    from sqlalchemy import make_url, text
    from sqlalchemy.ext.asyncio import create_async_engine

    parsed = make_url(url)

    async def create() -> None:
        admin = create_async_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
        async with admin.connect() as connection:
            await connection.execute(
                text(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)')
            )
            await connection.execute(text(f'CREATE DATABASE "{parsed.database}"'))
        await admin.dispose()

    asyncio.run(create())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="e05891a")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--quick", action="store_true", help="2 rounds of 100 saves")
    options = parser.parse_args()
    rounds, count = (2, 100) if options.quick else (options.rounds, options.count)
    rows = []
    with tempfile.TemporaryDirectory(prefix="save-cost-") as directory:
        scratch = Path(directory)
        (scratch / "base").mkdir()
        trees = {"base": _base_tree(options.base, scratch / "base"), "head": ROOT}
        for database, urls in _databases(scratch).items():
            for url in urls.values():
                if url.startswith("postgresql"):
                    _create_postgres(url)
            seen: dict[str, list[dict[str, float]]] = {"base": [], "head": []}
            for number in range(rounds):
                order = ("base", "head") if number % 2 == 0 else ("head", "base")
                for side in order:
                    seen[side].append(_run(trees[side], urls[side], count))
            unit = {s: statistics.median(r["unit"] for r in seen[s]) for s in seen}
            save = {s: statistics.median(r["save"] for r in seen[s]) for s in seen}
            trips = {s: int(seen[s][0]["round_trips"]) for s in seen}
            rows.append(
                f"| {database} | {trips['base']} | {trips['head']} "
                f"| {unit['base'] * 1e6:,.0f} µs | {unit['head'] * 1e6:,.0f} µs "
                f"| {unit['head'] / unit['base']:.3f} "
                f"| {save['base'] * 1e6:,.0f} µs | {save['head'] * 1e6:,.0f} µs "
                f"| {save['head'] / save['base']:.3f} |"
            )
    table = "\n".join(
        [
            f"Base `{options.base}` against this tree; medians of {rounds} alternating rounds "
            f"of {count}.",
            "",
            "| database | round trips, base | round trips, head | unit with one save, base "
            "| head | head / base | one save among many, base | head | head / base |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            *rows,
        ]
    )
    print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(table + "\n")


if __name__ == "__main__":
    main()
