"""Clients that stall their request bodies hold no database resource.

20 registered users each send a deposit's headers and the start of its body,
then nothing. Meanwhile another user makes 40 deposits, 8 at a time, and
``/readyz`` is polled. The bodies are awaited before any database work (the
authentication in ``before_request`` included), so on SQLite no stalled
request holds the write lock, and on PostgreSQL none holds a pooled connection.

Verdicts: every deposit answers 201, the slowest under 1 s; every ``/readyz``
answers 200; every stalled client gets a 408 (or is dropped) once the body
timeout has passed, not before; and the database holds exactly the 40 deposits.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import create_async_engine

from reliability.conftest import Figures, NewDatabase
from reliability.harness import client, serving
from reliability.load import Customer, WriteLog, customers
from service.ledger.models import Entry

STALLED = 20
DEPOSITS = 40
AT_A_TIME = 8
BODY_TIMEOUT = 10.0  # the service's default
SLOWEST_DEPOSIT = 1.0


@dataclass
class Stalled:
    status: int | None  # None: dropped without an answer
    waited: float


async def _stall(port: int, customer: Customer) -> Stalled:
    """Send a deposit's headers and part of its body, then nothing; wait for the server."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = b'{"amount": 100}'
    head = (
        f"POST /accounts/{customer.accounts[0]}/deposits HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\n"
        f"Authorization: {customer.headers['Authorization']}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    writer.write(head + body[:4])
    await writer.drain()
    started = time.monotonic()
    try:
        status_line = await asyncio.wait_for(reader.readline(), BODY_TIMEOUT + 20)
    finally:
        waited = time.monotonic() - started
        writer.close()
    if not status_line:
        return Stalled(None, waited)
    return Stalled(int(status_line.split()[1]), waited)


async def _poll_ready(base: str, stop: asyncio.Event, statuses: list[int]) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        while not stop.is_set():
            statuses.append((await http.get("/readyz")).status_code)
            await asyncio.sleep(0.25)


@pytest.mark.parametrize(("backend", "workers"), [("sqlite", 1), ("sqlite", 2), ("postgresql", 1)])
async def test_stalled_bodies_hold_no_database_resource(
    new_database: NewDatabase, tmp_path: Path, figures: Figures, backend: str, workers: int
) -> None:
    url = await new_database(backend)
    async with serving("stall", url, tmp_path, workers=workers) as server:
        async with client(server) as http:
            stallers = await customers(http, WriteLog("staller"), STALLED, accounts_each=1)
            [depositor] = await customers(http, WriteLog("depositor"), 1, accounts_each=1)

            stalled = [asyncio.create_task(_stall(server.port, c)) for c in stallers]
            await asyncio.sleep(1.0)  # every stalled request is in, and authenticated at once
            ready: list[int] = []
            stop = asyncio.Event()
            poller = asyncio.create_task(_poll_ready(server.base, stop, ready))

            latencies: list[float] = []
            statuses: list[int] = []
            gate = asyncio.Semaphore(AT_A_TIME)

            async def deposit() -> None:
                async with gate:
                    started = time.monotonic()
                    response = await http.post(
                        f"/accounts/{depositor.accounts[0]}/deposits",
                        json={"amount": 100},
                        headers=depositor.headers,
                    )
                    latencies.append(time.monotonic() - started)
                    statuses.append(response.status_code)

            await asyncio.gather(*(deposit() for _ in range(DEPOSITS)))
            await asyncio.sleep(0.5)
            stop.set()
            await poller
            outcomes = await asyncio.gather(*stalled)

    entries = await _entries(url, [c.accounts[0] for c in stallers], depositor.accounts[0])
    figures("deposits", f"{statuses.count(201)} of {DEPOSITS} answered 201")
    median, slowest = statistics.median(latencies) * 1000, max(latencies) * 1000
    figures("deposit latency", f"median {median:.0f} ms, slowest {slowest:.0f} ms")
    figures("/readyz", f"{ready.count(200)} of {len(ready)} polls answered 200")
    answered = [o.status for o in outcomes]
    figures(
        "stalled clients",
        f"{answered.count(408)} got 408, {answered.count(None)} dropped, after "
        f"{min(o.waited for o in outcomes):.1f}-{max(o.waited for o in outcomes):.1f} s",
    )
    figures("stored", f"{entries[1]} deposits on the depositor's account, {entries[0]} elsewhere")

    assert statuses == [201] * DEPOSITS
    assert max(latencies) < SLOWEST_DEPOSIT
    assert ready and set(ready) == {200}
    assert all(o.status in (408, None) for o in outcomes), answered
    assert all(o.waited >= BODY_TIMEOUT - 1.5 for o in outcomes)  # minus the 1 s head start
    assert entries == (0, DEPOSITS + 1)  # the stallers' accounts got nothing; +1: the funding


async def _entries(url: str, stalled_accounts: list[int], account: int) -> tuple[int, int]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            count = select(func.count()).select_from(Entry)
            elsewhere = await connection.scalar(count.where(Entry.account_id.in_(stalled_accounts)))
            mine = await connection.scalar(count.where(Entry.account_id == account))
            # The stallers' accounts were funded once each by customers().
            return int(elsewhere or 0) - len(stalled_accounts), int(mine or 0)
    finally:
        await engine.dispose()
