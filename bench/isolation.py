"""Per-test cost of the plugin's isolation against dropping and re-creating the schema.

Both run the same test bodies on the ledger schema, on SQLite and PostgreSQL,
in alternating rounds of the same run:

- rollback: what ``service.testing`` does, ``rolled_back(engine)``: one outer
  transaction per test that every session joins, rolled back at the end;
- naive: drop every table and create the schema again before each test, then
  run the test with real commits in a session of its own.

The naive side re-creates the schema with ``create_all``, which is quicker than
the migrations the plugin runs once per session: the comparison favours it.
Verdict: the isolation itself (the empty test: setup and teardown only) at
least 20x faster per test. The typical test is printed for scale: its body
costs the same on both sides and is not isolation.

Written to ``docs/benchmarks/results/isolation.md``. PostgreSQL: the database
``<BENCH_POSTGRES_URL's>_isolation`` (``.../bench_isolation`` by default).

Run: ``python bench/isolation.py [--tests 30] [--rounds 5] [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import harness  # noqa: E402
from service.db import Model, make_engine, unit_of_work  # noqa: E402
from service.db.testing import rolled_back  # noqa: E402
from service.ledger.factories import AccountFactory, UserFactory  # noqa: E402
from service.ledger.models import Account  # noqa: E402

THRESHOLD = 20.0

Body = Callable[[AsyncEngine], Awaitable[None]]
Isolation = Callable[[AsyncEngine], AbstractAsyncContextManager[Any]]


async def empty_test(engine: AsyncEngine) -> None:
    """A test that does nothing: the isolation's cost alone."""


async def typical_test(engine: AsyncEngine) -> None:
    """A user with two accounts made by the factories, then a query, as a handler test does."""
    async with unit_of_work(bind=engine):
        user = await UserFactory.create_async()
        await AccountFactory.create_batch_async(2, user_id=user.id)
        count = await Account.query.filter_by(user_id=user.id).count()
    assert count == 2


@asynccontextmanager
async def naive(engine: AsyncEngine) -> Any:
    async with engine.begin() as connection:
        await connection.run_sync(Model.metadata.drop_all)
        await connection.run_sync(Model.metadata.create_all)
    yield


async def _per_test_ms(engine: AsyncEngine, isolation: Isolation, body: Body, tests: int) -> float:
    started = time.perf_counter()
    for _ in range(tests):
        async with isolation(engine):
            await body(engine)
    return (time.perf_counter() - started) / tests * 1000


async def _left_behind(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        users = await connection.scalar(text("SELECT count(*) FROM users"))
        accounts = await connection.scalar(select(func.count()).select_from(Account))
    return int(users or 0) + int(accounts or 0)


async def measure(url: str, tests: int, rounds: int) -> list[tuple[str, float, float]]:
    engine = make_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(Model.metadata.drop_all)
            await connection.run_sync(Model.metadata.create_all)
        rows = []
        for name, body in (("empty test", empty_test), ("typical test", typical_test)):
            ours, theirs = [], []
            for _ in range(rounds):
                ours.append(await _per_test_ms(engine, rolled_back, body, tests))
                theirs.append(await _per_test_ms(engine, naive, body, tests))
                async with engine.begin() as connection:  # the naive side's last rows
                    await connection.run_sync(Model.metadata.drop_all)
                    await connection.run_sync(Model.metadata.create_all)
            for _ in range(tests):
                async with rolled_back(engine):
                    await body(engine)
            assert await _left_behind(engine) == 0, "the rolled-back tests left rows behind"
            rows.append((name, statistics.median(ours), statistics.median(theirs)))
        async with engine.begin() as connection:
            await connection.run_sync(Model.metadata.drop_all)
        return rows
    finally:
        await engine.dispose()


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=30, help="tests per round and side")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="3 rounds of 10 tests")
    options = parser.parse_args()
    tests, rounds = (10, 3) if options.quick else (options.tests, options.rounds)
    postgres_url = harness.postgres_url("isolation")
    await harness.ensure_postgres_database(postgres_url)
    rows: list[list[object]] = []
    print(f"per-test cost, median of {rounds} rounds of {tests} tests")
    with tempfile.TemporaryDirectory() as directory:
        for database, url in (
            ("SQLite", f"sqlite+aiosqlite:///{directory}/isolation.db"),
            ("PostgreSQL", postgres_url),
        ):
            for test, ours, theirs in await measure(url, tests, rounds):
                ratio = theirs / ours
                verdict = "met" if ratio >= THRESHOLD else "**not met**"
                if test != "empty test":
                    verdict = "(for scale)"
                rows.append(
                    [database, test, f"{ours:.2f} ms", f"{theirs:.2f} ms", f"{ratio:.1f}x", verdict]
                )
    header = ["database", "test", "rollback", "naive", "speed-up", f"target {THRESHOLD:.0f}x"]
    how = (
        "Per-test cost of the plugin's isolation (an outer transaction rolled back) against "
        "dropping and re-creating the schema before each test, in alternating rounds: the "
        f"median of {rounds} rounds of {tests} tests. The target is checked on the empty test "
        "(the isolation alone); the typical test is there for scale."
    )
    harness.write_results(
        "isolation",
        how,
        harness.markdown_table(header, rows, left=2),
        quick=options.quick,
    )
    return 0  # a benchmark: its verdict is in the table, a missed target fails nothing


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
