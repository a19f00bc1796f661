"""Statement load: clients that ask for statements, and an independent check of every answer.

Every account gets a year of entries (2025) written straight into the database
before the load, with days and amounts of their own, so that each statement's
figures depend on its period. No entry is written during the load, so a
statement's right figures are known: ``expected()`` recomputes them in Python
from the entries, read through a connection of its own, without the job's SQL.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import create_async_engine

from reliability.load import NO_ANSWER, NOT_SENT, Customer
from service.ledger.models import Account, Entry, Statement

__all__ = ["Asked", "StatementLog", "asking", "customers_with_a_year", "judge", "wait_until_done"]

YEAR = 2025
FIGURES = ("opening_balance", "closing_balance", "total_in", "total_out", "entry_count")


@dataclass
class Asked:
    """One statement request as the client saw it."""

    account_id: int
    start: date
    end: date
    started: float
    status: int = NO_ANSWER
    statement_id: int | None = None
    finished: float = 0.0


@dataclass
class StatementLog:
    asked: list[Asked] = field(default_factory=list)

    def accepted(self) -> list[Asked]:
        return [ask for ask in self.asked if ask.status == 202]

    def outcomes(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for ask in self.asked:
            key = {NOT_SENT: "not sent", NO_ANSWER: "no answer"}.get(ask.status, str(ask.status))
            counts[key] = counts.get(key, 0) + 1
        return dict(sorted(counts.items()))


async def customers_with_a_year(
    http: httpx.AsyncClient, url: str, prefix: str, *, count: int = 6, accounts_each: int = 2
) -> list[Customer]:
    """Users with accounts made through the API, each account with 2025's entries."""
    people = []
    for number in range(count):
        user = await http.post(
            "/users", json={"name": f"client {number}", "email": f"{prefix}-{number}@example.com"}
        )
        user.raise_for_status()
        customer = Customer(
            user.json()["id"], {"Authorization": f"Bearer {user.json()['token']}"}, []
        )
        for index in range(accounts_each):
            account = await http.post(
                "/accounts", json={"name": f"a{index}", "currency": "USD"}, headers=customer.headers
            )
            account.raise_for_status()
            customer.accounts.append(account.json()["id"])
        people.append(customer)
    await _a_year_of_entries(url, [account for person in people for account in person.accounts])
    return people


async def _a_year_of_entries(url: str, accounts: list[int]) -> None:
    rng = random.Random(2025)
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            for account in accounts:
                balance, rows = 0, []
                days = sorted(rng.sample(range(365), 40))
                for day in days:
                    amount = rng.randint(1, 90_000)
                    if balance > 0 and rng.random() < 0.4:
                        amount = -rng.randint(1, balance)
                    balance += amount
                    at = datetime(YEAR, 1, 1, 12, tzinfo=UTC) + timedelta(days=day)
                    kind = "deposit" if amount > 0 else "withdrawal"
                    rows.append(
                        {
                            "account_id": account,
                            "amount": amount,
                            "balance_after": balance,
                            "kind": kind,
                            "created_at": at,
                        }
                    )
                await connection.execute(insert(Entry), rows)  # in id order, which is day order
                await connection.execute(
                    update(Account).where(Account.id == account).values(balance=balance)
                )
    finally:
        await engine.dispose()


def _period(rng: random.Random) -> tuple[date, date]:
    start = date(YEAR, 1, 1) + timedelta(days=rng.randint(-20, 364))
    return start, start + timedelta(days=rng.randint(0, 120))


async def _ask(
    http: httpx.AsyncClient, log: StatementLog, people: list[Customer], rng: random.Random
) -> Asked:
    person = rng.choice(people)
    account = rng.choice(person.accounts)
    start, end = _period(rng)
    ask = Asked(account, start, end, time.monotonic())
    log.asked.append(ask)
    try:
        response = await http.post(
            f"/accounts/{account}/statements",
            json={"from": start.isoformat(), "to": end.isoformat()},
            headers=person.headers,
        )
    except httpx.ConnectError:
        ask.status = NOT_SENT
    except httpx.TransportError:
        ask.status = NO_ANSWER
    else:
        ask.status = response.status_code
        if response.status_code == 202:
            ask.statement_id = response.json()["id"]
    ask.finished = time.monotonic()
    return ask


@asynccontextmanager
async def asking(
    http: httpx.AsyncClient,
    log: StatementLog,
    people: list[Customer],
    *,
    clients: int,
    seed: int,
    pause: float = 0.0,
) -> AsyncIterator[None]:
    """``clients`` loops asking for statements for the duration of the block, each waiting
    ``pause`` seconds after each answer."""
    stop = asyncio.Event()

    async def client(number: int) -> None:
        rng = random.Random(seed * 1000 + number)
        while not stop.is_set():
            ask = await _ask(http, log, people, rng)
            if pause or ask.status == NOT_SENT:
                await asyncio.sleep(pause or 0.05)

    tasks = [asyncio.create_task(client(number)) for number in range(clients)]
    try:
        yield
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def statements(url: str) -> dict[int, Any]:
    """Every stored statement, by id, read through a connection of its own."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(select(Statement))
            return {row.id: row for row in rows}
    finally:
        await engine.dispose()


async def wait_until_done(url: str, *, within: float, since: float) -> tuple[float | None, int]:
    """Poll until no stored statement is pending, at most until ``since + within`` (monotonic).

    Returns the seconds from ``since`` until then (``None`` if never) and how many
    were still pending at the last look.
    """
    while True:
        pending = sum(1 for row in (await statements(url)).values() if row.status == "pending")
        now = time.monotonic()
        if pending == 0:
            return now - since, 0
        if now > since + within:
            return None, pending
        await asyncio.sleep(0.1)


def expected(entries: list[Any], account: int, start: date, end: date) -> dict[str, int]:
    """A statement's figures, from the account's entries: no SQL, no balance column."""
    begins = datetime.combine(start, datetime.min.time())
    ends = datetime.combine(end + timedelta(days=1), datetime.min.time())
    mine = [entry for entry in entries if entry.account_id == account]
    opening = sum(entry.amount for entry in mine if _naive(entry.created_at) < begins)
    within = [entry for entry in mine if begins <= _naive(entry.created_at) < ends]
    total_in = sum(entry.amount for entry in within if entry.amount > 0)
    total_out = -sum(entry.amount for entry in within if entry.amount < 0)
    return {
        "opening_balance": opening,
        "closing_balance": opening + total_in - total_out,
        "total_in": total_in,
        "total_out": total_out,
        "entry_count": len(within),
    }


def _naive(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(tzinfo=None) if at.tzinfo else at


async def judge(url: str, log: StatementLog) -> tuple[list[str], dict[str, int]]:
    """Every statement answered 202 is stored and ready with the right figures; so is every
    statement stored at all (one whose answer was cut off included). Returns the problems and
    the stored statements by status."""
    stored = await statements(url)
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            entries = list(await connection.execute(select(Entry)))
    finally:
        await engine.dispose()
    problems = []
    by_status: dict[str, int] = {}
    for row in stored.values():
        by_status[row.status] = by_status.get(row.status, 0) + 1
        if row.status != "ready":
            problems.append(f"statement {row.id} is {row.status}")
            continue
        want = expected(entries, row.account_id, row.period_start, row.period_end)
        got = {name: getattr(row, name) for name in FIGURES}
        if got != want:
            problems.append(f"statement {row.id}: figures {got}, expected {want}")
    for ask in log.accepted():
        assert ask.statement_id is not None
        row = stored.get(ask.statement_id)
        if row is None:
            problems.append(f"LOST: statement {ask.statement_id} was answered 202 but not stored")
        elif (row.account_id, row.period_start, row.period_end) != (
            ask.account_id,
            ask.start,
            ask.end,
        ):
            problems.append(f"statement {ask.statement_id} is not the one asked for")
    return problems, by_status
