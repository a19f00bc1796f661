"""Clients that move money through the API and log every write and what became of it.

Every write carries an ``Idempotency-Key`` of its own, so that the audit can find
it in the database afterwards (``reliability.audit``). A write ends in one of
three ways, from the client's side:

- an HTTP status: the server answered (``status``);
- ``NOT_SENT``: the connection could not even be opened, so the server never
  saw the request;
- ``NO_ANSWER``: the request may have been sent but no answer came (the server
  died, or dropped the connection): its fate is unknown to the client.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

__all__ = ["NO_ANSWER", "NOT_SENT", "Customer", "Write", "WriteLog", "customers", "drive", "load"]

NOT_SENT = -1
NO_ANSWER = 0
INITIAL_BALANCE = 50_000


@dataclass
class Write:
    """One deposit or transfer as the client saw it."""

    key: str
    user_id: int
    kind: str  # "deposit" or "transfer"
    amount: int
    accounts: tuple[int, ...]  # (account,) or (source, target)
    started: float
    status: int = NO_ANSWER
    finished: float = 0.0
    body: dict[str, Any] | None = None

    @property
    def latency(self) -> float:
        return self.finished - self.started


@dataclass
class WriteLog:
    """Every write of a run, in the order they were started."""

    prefix: str
    writes: list[Write] = field(default_factory=list)
    _numbers: itertools.count[int] = field(default_factory=itertools.count)

    def new_key(self) -> str:
        return f"{self.prefix}-{next(self._numbers)}"

    def outcomes(self) -> Counter[str]:
        """Writes per outcome: ``2xx``, ``4xx``, ``5xx``, ``no answer``, ``not sent``."""
        counts: Counter[str] = Counter()
        for write in self.writes:
            if write.status == NOT_SENT:
                counts["not sent"] += 1
            elif write.status == NO_ANSWER:
                counts["no answer"] += 1
            else:
                counts[f"{write.status // 100}xx"] += 1
        return counts


@dataclass
class Customer:
    user_id: int
    headers: dict[str, str]
    accounts: list[int]


async def send(
    client: httpx.AsyncClient,
    log: WriteLog,
    customer: Customer,
    kind: str,
    amount: int,
    accounts: tuple[int, ...],
) -> Write:
    """Make one write with a fresh Idempotency-Key, and log what became of it."""
    write = Write(log.new_key(), customer.user_id, kind, amount, accounts, time.monotonic())
    log.writes.append(write)
    if kind == "deposit":
        path, body = f"/accounts/{accounts[0]}/deposits", {"amount": amount}
    else:
        path = "/transfers"
        body = {"from_account_id": accounts[0], "to_account_id": accounts[1], "amount": amount}
    headers = {**customer.headers, "Idempotency-Key": write.key}
    try:
        response = await client.post(path, json=body, headers=headers)
    except httpx.ConnectError:
        write.status = NOT_SENT
    except httpx.TransportError:
        write.status = NO_ANSWER
    else:
        write.status = response.status_code
        write.body = response.json()
    write.finished = time.monotonic()
    return write


async def customers(
    client: httpx.AsyncClient, log: WriteLog, count: int, accounts_each: int = 3
) -> list[Customer]:
    """Register ``count`` users with ``accounts_each`` funded accounts; the deposits are logged."""
    made = []
    for number in range(count):
        email = f"{log.prefix}-{number}@example.com"
        user = await client.post("/users", json={"name": f"client {number}", "email": email})
        user.raise_for_status()
        customer = Customer(
            user.json()["id"], {"Authorization": f"Bearer {user.json()['token']}"}, []
        )
        for index in range(accounts_each):
            account = await client.post(
                "/accounts",
                json={"name": f"a{index}", "currency": "USD"},
                headers=customer.headers,
            )
            account.raise_for_status()
            customer.accounts.append(account.json()["id"])
            funded = await send(
                client, log, customer, "deposit", INITIAL_BALANCE, (customer.accounts[-1],)
            )
            if funded.status != 201:
                raise RuntimeError(f"could not fund an account: {funded}")
        made.append(customer)
    return made


async def drive(
    client: httpx.AsyncClient,
    log: WriteLog,
    people: list[Customer],
    stop: asyncio.Event,
    seed: int,
    pause: float = 0.0,
) -> None:
    """Random deposits and transfers until ``stop`` is set.

    Transfers are often larger than the balance, so some are refused (422):
    refused writes must leave no trace either.
    """
    rng = random.Random(seed)
    while not stop.is_set():
        customer = rng.choice(people)
        if rng.random() < 0.4:
            account = rng.choice(customer.accounts)
            amount = rng.randint(1, 5_000)
            write = await send(client, log, customer, "deposit", amount, (account,))
        else:
            source, target = rng.sample(customer.accounts, 2)
            amount = rng.randint(1, INITIAL_BALANCE)
            write = await send(client, log, customer, "transfer", amount, (source, target))
        if pause or write.status == NOT_SENT:
            await asyncio.sleep(pause or 0.05)


@asynccontextmanager
async def load(
    client: httpx.AsyncClient,
    log: WriteLog,
    people: list[Customer],
    *,
    clients: int,
    seed: int = 0,
    pause: float = 0.0,
) -> AsyncIterator[None]:
    """``clients`` concurrent ``drive`` loops for the duration of the block; on leaving it, each
    finishes the write it is making (or learns that it got no answer) and stops."""
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(drive(client, log, people, stop, seed=seed + n, pause=pause))
        for n in range(clients)
    ]
    try:
        yield
    finally:
        stop.set()
        await asyncio.gather(*tasks)
