"""Jobs through the outbox against the base commit's background backend, in the same run.

The base is commit 146505f, where ``enqueue`` handed the job to a Quart
background task from an on-commit callback (nothing written, nothing recovered).
It is checked out into a temporary clone and run with this interpreter; each
side runs ``bench/jobs_side.py`` in a process of its own (``PYTHONPATH`` naming
its tree), on a database migrated by its own tree, in alternating rounds.

Figures per side, median of the rounds:

- a backlog of 10,000 jobs, enqueued in one unit of work, drains: jobs/s from
  the commit to the last job's end (and each job's wait, enqueue to start);
- jobs one at a time: enqueue-to-start latency, p50 and p99.

Verdict: the outbox's p50 enqueue-to-start latency at most 2 ms above the base's.
Run: ``python bench/jobs.py [--db sqlite|postgresql|all] [--rounds 3] [--jobs 10000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.databases import ensure_postgres_database  # noqa: E402

BASE = "146505f"
LATENCY_BUDGET_MS = 2.0
POSTGRES_URL = os.environ.get(
    "BENCH_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/bench_jobs"
)


@dataclass
class Side:
    name: str
    tree: Path
    url: str
    rates: list[float] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    backlog_waits: list[list[float]] = field(default_factory=list)
    latencies: list[list[float]] = field(default_factory=list)


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


def _base_tree(into: Path) -> Path:
    tree = into / "base"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(tree)], check=True)
    subprocess.run(["git", "-C", str(tree), "checkout", "--quiet", BASE], check=True)
    return tree


def _env(side: Side) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(side.tree), "DATABASE_URL": side.url}


async def _migrate(side: Side) -> None:
    if side.url.startswith("postgresql"):
        from sqlalchemy import text
        from sqlalchemy.ext.asyncio import create_async_engine

        await ensure_postgres_database(side.url)
        engine = create_async_engine(side.url)
        async with engine.begin() as connection:  # each tree's own migrations, from scratch
            await connection.execute(text("DROP SCHEMA public CASCADE"))
            await connection.execute(text("CREATE SCHEMA public"))
        await engine.dispose()
    migrate = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "alembic",
        "upgrade",
        "head",
        cwd=side.tree,
        env=_env(side),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    if await migrate.wait() != 0:
        raise RuntimeError(f"{side.name}: alembic upgrade head failed")


def _round(side: Side, jobs: int, latency: int) -> None:
    completed = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "jobs_side.py"), "--url", side.url]
        + ["--drain", str(jobs), "--latency", str(latency)],
        cwd=side.tree,
        env=_env(side),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"{side.name} failed:\n{completed.stdout}\n{completed.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    drain, latency_run = result["drain"], result["latency"]
    side.rates.append(drain["finished"] / drain["seconds"] if drain["seconds"] else 0.0)
    side.failed.append(drain["jobs"] - drain["finished"])
    side.backlog_waits.append(drain["waits"])
    side.latencies.append(latency_run["waits"])


def _ms(values: list[list[float]], fraction: float) -> float:
    return statistics.median(_percentile(run, fraction) for run in values) * 1000


def _report(database: str, sides: list[Side], jobs: int) -> bool:
    print(f"\n{database}: {jobs:,} jobs drained, then jobs one at a time (median of rounds)")
    print(
        f"{'side':<28} {'jobs/s':>8} {'lost':>6} {'backlog wait p50':>17} "
        f"{'latency p50':>12} {'latency p99':>12}"
    )
    for side in sides:
        print(
            f"{side.name:<28} {statistics.median(side.rates):>8.0f} {max(side.failed):>6} "
            f"{_ms(side.backlog_waits, 0.5) / 1000:>16.2f}s "
            f"{_ms(side.latencies, 0.5):>10.2f}ms {_ms(side.latencies, 0.99):>10.2f}ms"
        )
    outbox, base = sides
    grown = _ms(outbox.latencies, 0.5) - _ms(base.latencies, 0.5)
    rounds = [
        (_percentile(new, 0.5) - _percentile(old, 0.5)) * 1000
        for new, old in zip(outbox.latencies, base.latencies, strict=True)
    ]
    held = grown <= LATENCY_BUDGET_MS
    print(
        f"p50 latency grew by {grown:+.2f} ms (budget {LATENCY_BUDGET_MS:.0f} ms; per round "
        f"{', '.join(f'{value:+.2f}' for value in rounds)}): {'held' if held else 'EXCEEDED'}"
    )
    return held


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", choices=["sqlite", "postgresql", "all"], default="all")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--latency", type=int, default=300)
    options = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-jobs-"))
    verdicts = []
    try:
        base_tree = _base_tree(scratch)
        databases = ["sqlite", "postgresql"] if options.db == "all" else [options.db]
        for database in databases:
            if database == "sqlite":
                urls = [f"sqlite+aiosqlite:///{scratch}/{name}.db" for name in ("outbox", "base")]
            else:
                urls = [f"{POSTGRES_URL}_{name}" for name in ("outbox", "base")]
            sides = [
                Side("outbox (this tree)", ROOT, urls[0]),
                Side(f"background ({BASE})", base_tree, urls[1]),
            ]
            for side in sides:
                await _migrate(side)
            for number in range(options.rounds):
                for side in sides if number % 2 == 0 else reversed(sides):
                    _round(side, options.jobs, options.latency)
            verdicts.append(_report(database, sides, options.jobs))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if not all(verdicts):
        sys.exit(1)


if __name__ == "__main__":
    asyncio.run(main())
