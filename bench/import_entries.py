"""The 100k-row CSV import against a plain Core ``insert()`` executemany of the same rows.

Both write the same 100,000 entries to one account in one transaction, on a
SQLite file and on PostgreSQL, in alternating rounds of the same run:

- import: ``service import-entries``'s work, ``import_entries()`` in a unit of
  work: reading and validating the CSV, the running balance, inserts through
  the session in batches of 1000, the account's balance, the commit;
- core: ``connection.execute(insert(entries), rows)`` of the already-built rows,
  then the commit: no parsing, no validation, no balance.

Verdict: the import at least 0.7x the speed of the Core executemany.
Written to ``docs/benchmarks/results/import_entries.md``. PostgreSQL: the database
``<BENCH_POSTGRES_URL's>_import`` (``.../bench_import`` by default).

Run: ``python bench/import_entries.py [--rows 100000] [--rounds 3] [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Table, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import harness  # noqa: E402
from service.db import Model, make_engine, unit_of_work  # noqa: E402
from service.ledger.importer import import_entries  # noqa: E402
from service.ledger.models import Account, Entry, User, utcnow  # noqa: E402

THRESHOLD = 0.7


def write_csv(path: Path, rows: int) -> list[dict[str, Any]]:
    """A file of mostly deposits, never overdrawn; and the entries it makes, for Core."""
    randomness = random.Random(7)
    balance, lines, entries = 0, ["kind,amount,description"], []
    now = utcnow()
    for number in range(rows):
        amount = randomness.randint(1, 50_000)
        kind = "withdrawal" if amount <= balance and randomness.random() < 0.3 else "deposit"
        balance += amount if kind == "deposit" else -amount
        lines.append(f"{kind},{amount},row {number}")
        entries.append(
            {
                "account_id": 1,
                "amount": amount if kind == "deposit" else -amount,
                "balance_after": balance,
                "kind": kind,
                "description": f"row {number}",
                "created_at": now,
            }
        )
    path.write_text("\n".join(lines) + "\n")
    return entries


async def _reset(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        await connection.execute(delete(Entry))
        await connection.execute(update(Account).values(balance=0))


async def _import(engine: AsyncEngine, path: Path) -> float:
    started = time.perf_counter()
    with path.open(encoding="utf-8") as file:
        await unit_of_work(bind=engine)(import_entries)(file, 1)
    return time.perf_counter() - started


async def _core(engine: AsyncEngine, entries: list[dict[str, Any]]) -> float:
    started = time.perf_counter()
    async with engine.begin() as connection:
        await connection.execute(insert(cast(Table, Entry.__table__)), entries)
    return time.perf_counter() - started


async def _stored(engine: AsyncEngine) -> tuple[int, int]:
    async with engine.connect() as connection:
        count = await connection.scalar(select(func.count()).select_from(Entry))
        balance = await connection.scalar(select(Account.balance))
    return int(count or 0), int(balance or 0)


async def measure(url: str, path: Path, entries: list[dict[str, Any]], rounds: int) -> Any:
    engine = make_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(Model.metadata.drop_all)
            await connection.run_sync(Model.metadata.create_all)
            await connection.execute(
                insert(User).values(
                    id=1,
                    name="Bench",
                    email="b@x.org",
                    email_key="b@x.org",
                    created_at=utcnow(),
                )
            )
            await connection.execute(
                insert(Account).values(
                    id=1, user_id=1, name="Main", currency="USD", balance=0, created_at=utcnow()
                )
            )
        ours, theirs = [], []
        for _ in range(rounds):
            await _reset(engine)
            ours.append(await _import(engine, path))
            assert await _stored(engine) == (len(entries), entries[-1]["balance_after"])
            await _reset(engine)
            theirs.append(await _core(engine, entries))
        async with engine.begin() as connection:
            await connection.run_sync(Model.metadata.drop_all)
        return statistics.median(ours), statistics.median(theirs)
    finally:
        await engine.dispose()


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="2 rounds of 10,000 rows")
    options = parser.parse_args()
    count, rounds = (10_000, 2) if options.quick else (options.rows, options.rounds)
    postgres_url = harness.postgres_url("import")
    await harness.ensure_postgres_database(postgres_url)
    rows: list[list[object]] = []
    print(f"{count} rows, one transaction, median of {rounds} rounds")
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory, "entries.csv")
        entries = write_csv(path, count)
        for database, url in (
            ("SQLite", f"sqlite+aiosqlite:///{directory}/import.db"),
            ("PostgreSQL", postgres_url),
        ):
            ours, theirs = await measure(url, path, entries, rounds)
            ratio = theirs / ours
            verdict = "met" if ratio >= THRESHOLD else "**not met**"
            rows.append(
                [
                    database,
                    f"{ours:.2f} s",
                    f"{theirs:.2f} s",
                    f"{count / ours:,.0f}",
                    f"{ratio:.2f}x",
                    verdict,
                ]
            )
    header = ["database", "import", "Core executemany", "import rows/s", "import / Core speed"]
    header.append(f"target {THRESHOLD}x")
    how = (
        f"`service import-entries`'s work on {count:,} rows against a plain Core executemany of "
        f"the same rows, in one transaction each, in alternating rounds: the median of {rounds}."
    )
    harness.write_results(
        "import_entries",
        how,
        harness.markdown_table(header, rows),
        quick=options.quick,
    )
    return 0  # a benchmark: its verdict is in the table, a missed target fails nothing


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
