"""Load the ledger API under Hypercorn (2 workers) with 50 concurrent clients.

Each client loops over random deposits, withdrawals and transfers for the
given duration. The script reports requests/s, p50/p99 latency, the count of
5xx responses (must be 0), and whether the invariants held afterwards (they
must): every account's balance equals the sum of its entries and is never
negative, and the total over all accounts equals what the clients saw
deposited minus what they saw withdrawn. Written to
``docs/benchmarks/results/ledger_load.md``. PostgreSQL: the database
``<BENCH_POSTGRES_URL's>_ledger_load`` (``.../bench_ledger_load`` by default), made
anew at each run.

    .venv/bin/python bench/ledger_load.py [--db sqlite|postgresql|all] [--seconds 20] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from sqlalchemy import func, make_url, select
from sqlalchemy.ext.asyncio import create_async_engine

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `bench` importable
    sys.path.insert(0, str(ROOT))

from bench import harness  # noqa: E402 - importable once the path is set
from bench.harness import Server  # noqa: E402
from service.ledger.models import Account, Entry  # noqa: E402

USERS = 10
ACCOUNTS_PER_USER = 3
CLIENTS = 50


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    deposited: int = 0
    withdrawn: int = 0


@dataclass
class Customer:
    headers: dict[str, str]
    accounts: list[int]


async def _customers(client: httpx.AsyncClient, tally: Tally) -> list[Customer]:
    customers = []
    for number in range(USERS):
        user = await client.post(
            "/users", json={"name": f"load {number}", "email": f"load{number}@example.com"}
        )
        headers = {"Authorization": f"Bearer {user.json()['token']}"}
        accounts = []
        for index in range(ACCOUNTS_PER_USER):
            account = await client.post(
                "/accounts", json={"name": f"a{index}", "currency": "USD"}, headers=headers
            )
            accounts.append(account.json()["id"])
            deposit = await client.post(
                f"/accounts/{accounts[-1]}/deposits", json={"amount": 100_000}, headers=headers
            )
            deposit.raise_for_status()
            tally.deposited += 100_000
        customers.append(Customer(headers, accounts))
    return customers


async def _client(
    client: httpx.AsyncClient, customers: list[Customer], tally: Tally, until: float, seed: int
) -> None:
    rng = random.Random(seed)
    while time.monotonic() < until:
        customer = rng.choice(customers)
        kind = rng.choice(["deposit", "withdrawal", "transfer", "transfer"])
        amount = rng.randint(1, 20_000)
        if kind == "transfer":
            source, target = rng.sample(customer.accounts, 2)
            path = "/transfers"
            body = {"from_account_id": source, "to_account_id": target, "amount": amount}
        else:
            path = f"/accounts/{rng.choice(customer.accounts)}/{kind}s"
            body = {"amount": amount}
        started = time.perf_counter()
        response = await client.post(path, json=body, headers=customer.headers)
        tally.latencies.append(time.perf_counter() - started)
        tally.statuses[response.status_code] += 1
        if response.status_code == 201 and kind == "deposit":
            tally.deposited += amount
        elif response.status_code == 201 and kind == "withdrawal":
            tally.withdrawn += amount


async def invariants(url: str, expected_total: int) -> tuple[bool, str]:
    """Through a connection of its own: every balance equals the sum of its account's entries,
    none is negative, and their total is ``expected_total`` (deposited minus withdrawn)."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            mismatched = await connection.scalar(
                select(func.count())
                .select_from(Account)
                .where(
                    Account.balance
                    != select(func.coalesce(func.sum(Entry.amount), 0))
                    .where(Entry.account_id == Account.id)
                    .scalar_subquery()
                )
            )
            negative = await connection.scalar(
                select(func.count()).select_from(Account).where(Account.balance < 0)
            )
            total = int(await connection.scalar(select(func.sum(Account.balance))) or 0)
    finally:
        await engine.dispose()
    held = mismatched == 0 and negative == 0 and total == expected_total
    return held, (
        f"accounts whose balance != sum(entries): {mismatched}; negative balances: {negative}; "
        f"total {total} vs deposited-withdrawn {expected_total}"
    )


async def run(url: str, seconds: float, work: Path) -> tuple[bool, list[object]]:
    await harness.prepare_database(url)
    backend = make_url(url).get_backend_name()
    # 50 clients from one address: the rate limits would measure themselves (Server: off).
    server = Server(
        f"ledger-load-{backend}", "service.app:app", {"DATABASE_URL": url}, work, workers=2
    )
    tally = Tally()
    # A pooled connection is dropped by the client before Hypercorn's keep-alive timeout (5 s)
    # can close it: with both at 5 s, a request sent as the server closes is lost in flight.
    limits = httpx.Limits(
        max_connections=CLIENTS, max_keepalive_connections=CLIENTS, keepalive_expiry=2
    )
    try:
        await asyncio.to_thread(server.wait_ready, "/readyz")
        async with httpx.AsyncClient(base_url=server.base, limits=limits, timeout=60) as client:
            customers = await _customers(client, tally)
            started = time.monotonic()
            until = started + seconds
            await asyncio.gather(
                *(_client(client, customers, tally, until, seed) for seed in range(CLIENTS))
            )
            elapsed = time.monotonic() - started
    finally:
        await asyncio.to_thread(server.stop)
    held, detail = await invariants(url, tally.deposited - tally.withdrawn)
    requests = sum(tally.statuses.values())
    errors = sum(count for status, count in tally.statuses.items() if status >= 500)
    quantiles = statistics.quantiles(tally.latencies, n=100)
    print(f"\n== {backend}: {CLIENTS} clients, Hypercorn -w 2, {elapsed:.1f} s")
    print(f"requests      {requests}  ({requests / elapsed:.0f} req/s)")
    print(f"latency       p50 {quantiles[49] * 1000:.1f} ms   p99 {quantiles[98] * 1000:.1f} ms")
    print(f"statuses      {dict(sorted(tally.statuses.items()))}")
    print(f"5xx           {errors}  ({'PASS' if errors == 0 else 'FAIL'})")
    print(f"invariants    {'held' if held else 'BROKEN'}: {detail}")
    row: list[object] = [
        {"sqlite": "SQLite", "postgresql": "PostgreSQL"}.get(backend, backend),
        f"{requests / elapsed:,.0f}",
        f"{quantiles[49] * 1000:,.0f} ms",
        f"{quantiles[98] * 1000:,.0f} ms",
        errors,
        "held" if held else "**broken**",
    ]
    return held and errors == 0, row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=["sqlite", "postgresql", "all"], default="all")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--quick", action="store_true", help="5 s")
    args = parser.parse_args()
    seconds = 5.0 if args.quick else args.seconds
    scratch = Path(tempfile.mkdtemp(prefix="ledger-load-"))
    urls = []
    if args.db in ("sqlite", "all"):
        urls.append(f"sqlite+aiosqlite:///{scratch}/ledger.db")
    if args.db in ("postgresql", "all"):
        urls.append(harness.postgres_url("ledger_load"))
    try:
        results = [asyncio.run(run(url, seconds, scratch)) for url in urls]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    header = ["database", "requests/s", "p50", "p99", "5xx", "invariants"]
    how = (
        f"Hypercorn with 2 workers, {CLIENTS} concurrent clients (httpx, on the same machine) "
        f"doing random deposits, withdrawals and transfers for {seconds:g} s across {USERS} "
        f"users with {ACCOUNTS_PER_USER} accounts each. Invariants, checked through a "
        "connection of their own afterwards: every balance equals the sum of its account's "
        "entries, none is negative, and the total equals what the clients saw deposited "
        "minus what they saw withdrawn."
    )
    harness.write_results(
        "ledger_load",
        how,
        harness.markdown_table(header, [row for _, row in results]),
        quick=args.quick,
    )
    passed = all(ok for ok, _ in results)
    print("\nverdict:", "PASS" if passed else "FAIL")
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
