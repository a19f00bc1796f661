"""Load the ledger API under Hypercorn (2 workers) with 50 concurrent clients.

Each client loops over random deposits, withdrawals and transfers for the
given duration. The script reports requests/s, p50/p99 latency, the count of
5xx responses (must be 0), and whether the invariants held afterwards (they
must): every account's balance equals the sum of its entries and is never
negative, and the total over all accounts equals what the clients saw
deposited minus what they saw withdrawn.

    .venv/bin/python bench/ledger_load.py [--db sqlite|postgresql|all] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from sqlalchemy import func, make_url, select, text
from sqlalchemy.ext.asyncio import create_async_engine

from service.ledger.models import Account, Entry

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
POSTGRES_URL = os.environ.get(
    "LEDGER_LOAD_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/ledger_load"
)
"""Dropped and made anew at each run."""
PORT = 8765
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


async def prepare_database(url: str) -> None:
    """An empty database, migrated to head by Alembic (PostgreSQL: dropped and created anew)."""
    if url.startswith("postgresql"):
        parsed = make_url(url)
        admin = create_async_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
        name = parsed.database
        async with admin.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            await connection.execute(text(f'CREATE DATABASE "{name}"'))
        await admin.dispose()
    migrate = await asyncio.create_subprocess_exec(
        BIN / "alembic",
        "upgrade",
        "head",
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": url},
        stdout=asyncio.subprocess.DEVNULL,
    )
    if await migrate.wait() != 0:
        raise RuntimeError("alembic upgrade head failed")


def _serve(url: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [BIN / "hypercorn", "-w", "2", "--bind", f"127.0.0.1:{PORT}", "service.app:app"],
        cwd=ROOT,
        # 50 clients from one address: the rate limits would measure themselves.
        env={**os.environ, "DATABASE_URL": url, "RATE_LIMIT_ENABLED": "false"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


async def _wait_ready(client: httpx.AsyncClient) -> None:
    for _ in range(100):
        try:
            if (await client.get("/readyz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError("the server did not become ready")


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


async def run(url: str, seconds: float) -> bool:
    await prepare_database(url)
    server = _serve(url)
    tally = Tally()
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{PORT}", limits=limits, timeout=60
        ) as client:
            await _wait_ready(client)
            customers = await _customers(client, tally)
            started = time.monotonic()
            until = started + seconds
            await asyncio.gather(
                *(_client(client, customers, tally, until, seed) for seed in range(CLIENTS))
            )
            elapsed = time.monotonic() - started
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    held, detail = await invariants(url, tally.deposited - tally.withdrawn)
    requests = sum(tally.statuses.values())
    errors = sum(count for status, count in tally.statuses.items() if status >= 500)
    quantiles = statistics.quantiles(tally.latencies, n=100)
    backend = make_url(url).get_backend_name()
    print(f"\n== {backend}: {CLIENTS} clients, Hypercorn -w 2, {elapsed:.1f} s")
    print(f"requests      {requests}  ({requests / elapsed:.0f} req/s)")
    print(f"latency       p50 {quantiles[49] * 1000:.1f} ms   p99 {quantiles[98] * 1000:.1f} ms")
    print(f"statuses      {dict(sorted(tally.statuses.items()))}")
    print(f"5xx           {errors}  ({'PASS' if errors == 0 else 'FAIL'})")
    print(f"invariants    {'held' if held else 'BROKEN'}: {detail}")
    return held and errors == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=["sqlite", "postgresql", "all"], default="all")
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="ledger-load-"))
    urls = []
    if args.db in ("sqlite", "all"):
        urls.append(f"sqlite+aiosqlite:///{scratch}/ledger.db")
    if args.db in ("postgresql", "all"):
        urls.append(POSTGRES_URL)
    try:
        results = [asyncio.run(run(url, args.seconds)) for url in urls]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print("\nverdict:", "PASS" if all(results) else "FAIL")
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
