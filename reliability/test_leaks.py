"""Leaks: 10,000 requests later, no session, no connection and no memory is left behind.

One Hypercorn worker serves ``reliability.probe_app`` (the service plus a route
that reports the scoped-session registry, the pool's checked-out connections and
the process's resident memory). Eight clients send a fixed rotation of requests:
successes, failures (401, 404, 400, 422, and a 422 that has already read and
locked rows), and clients that hang up mid-request: one sends half a body and
goes away while the handler waits for the rest (its session already holds a
connection), one sends a whole write and leaves without reading the answer.

After a warm-up of 2,000 requests (first-use caches: compiled SQL, validators,
the pool filling up) the memory is read, then 10,000 requests are counted, then
the registry and the pool must be empty, no task may outlive its connection,
and resident memory must have grown by less than 10 MB: as the system counts it,
and as what the process still holds once glibc has handed back the free pages
it keeps for reuse (``malloc_trim``), which is what a leak would grow.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from reliability.conftest import Figures, NewDatabase
from reliability.harness import client, serving
from reliability.load import Customer, WriteLog, customers

REQUESTS = 10_000
WARM_UP = 2_000
CLIENTS = 8
RSS_LIMIT = 10 * 1024 * 1024

Request = Callable[[], Awaitable[str]]


def _rotation(http: httpx.AsyncClient, port: int, customer: Customer) -> list[Request]:
    """One request of each kind; each returns "success", "failure" or "disconnect"."""
    mine, other = customer.accounts[0], customer.accounts[1]
    auth = customer.headers
    forged = {"Authorization": "Bearer forged"}

    def expect(status: int, method: str, path: str, **options: Any) -> Request:
        async def request() -> str:
            response = await http.request(method, path, **options)
            assert response.status_code == status, (method, path, response.text)
            return "success" if status < 400 else "failure"

        return request

    async def hang_up(data: bytes) -> str:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(data)
        await writer.drain()
        await asyncio.sleep(0.01)  # let the server start on it
        writer.close()
        await writer.wait_closed()
        # Closed loop, like every other client: give the server the time it takes to wind the
        # request down, rather than flooding it with abandoned writes (SQLite takes them one
        # at a time, and a handler cancelled while its connection waits for the write lock
        # keeps that connection until the lock is granted).
        await asyncio.sleep(0.05)
        return "disconnect"

    def raw(body: bytes, declared: int) -> bytes:
        head = (
            f"POST /accounts/{mine}/deposits HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: {auth['Authorization']}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {declared}\r\n\r\n"
        )
        return head.encode() + body

    whole = b'{"amount": 1}'
    return [
        expect(200, "GET", "/users/me", headers=auth),
        expect(200, "GET", "/accounts?limit=10", headers=auth),
        expect(201, "POST", f"/accounts/{mine}/deposits", json={"amount": 1}, headers=auth),
        expect(200, "GET", f"/accounts/{mine}/entries?limit=5", headers=auth),
        expect(
            201,
            "POST",
            "/transfers",
            json={"from_account_id": mine, "to_account_id": other, "amount": 1},
            headers=auth,
        ),
        expect(401, "GET", "/users/me", headers=forged),
        expect(404, "GET", "/accounts/999999", headers=auth),
        expect(
            400,
            "POST",
            "/transfers",
            content=b"{not json",
            headers={**auth, "Content-Type": "application/json"},
        ),
        expect(422, "POST", f"/accounts/{mine}/deposits", json={"amount": -1}, headers=auth),
        expect(
            422, "POST", f"/accounts/{other}/withdrawals", json={"amount": 10**12}, headers=auth
        ),
        lambda: hang_up(raw(whole[:5], declared=len(whole))),
        lambda: hang_up(raw(whole, declared=len(whole))),
    ]


async def _run(rotation: list[Request], count: int) -> Counter[str]:
    kinds = itertools.cycle(rotation)
    started = itertools.count()
    tally: Counter[str] = Counter()

    async def worker() -> None:
        while next(started) < count:
            tally[await next(kinds)()] += 1

    await asyncio.gather(*(worker() for _ in range(CLIENTS)))
    return tally


async def _state(http: httpx.AsyncClient) -> dict[str, int]:
    response = await http.get("/_reliability/state")
    state: dict[str, int] = response.json()
    return state


async def _settled(http: httpx.AsyncClient, idle_tasks: int) -> dict[str, int]:
    """The state once the server has wound down what the clients left (at most 10 s).

    Cancelled handlers are torn down at once; the connections of clients that hung up go
    when Hypercorn notices, their tasks with them, down to what the open keep-alive
    connections need.
    """
    for _ in range(100):
        state = await _state(http)
        if state["sessions"] == state["checked_out"] == 0 and state["tasks"] <= idle_tasks:
            break
        await asyncio.sleep(0.1)
    return state


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_ten_thousand_requests_leave_no_session_connection_or_memory_behind(
    backend: str, new_database: NewDatabase, tmp_path: Path, figures: Figures
) -> None:
    url = await new_database(backend)
    target = "reliability.probe_app:app"
    async with serving(f"leaks-{backend}", url, tmp_path, workers=1, target=target) as server:
        async with client(server) as http:
            people = await customers(http, WriteLog(prefix=f"leaks-{backend}"), count=1)
            rotation = _rotation(http, server.port, people[0])
            # The server's own tasks, plus a few for each of the clients' keep-alive connections.
            idle_tasks = (await _state(http))["tasks"] + 3 * CLIENTS
            await _run(rotation, WARM_UP)
            before = await _settled(http, idle_tasks)
            tally = await _run(rotation, REQUESTS)
            after = await _settled(http, idle_tasks)

    growth = after["rss_held"] - before["rss_held"]
    figures("requests counted (after a warm-up of 2,000)", dict(sorted(tally.items())))
    figures("scoped sessions left", after["sessions"])
    figures("pooled connections checked out", after["checked_out"])
    figures(
        "asyncio tasks before / after", f"{before['tasks']} / {after['tasks']} (idle: {idle_tasks})"
    )
    figures(
        "resident memory held before / after / growth",
        f"{before['rss_held'] / 2**20:.1f} / {after['rss_held'] / 2**20:.1f} / "
        f"{growth / 2**20:+.2f} MB (limit 10 MB)",
    )
    figures(
        "resident memory growth as counted before malloc_trim (limit 10 MB)",
        f"{(after['rss'] - before['rss']) / 2**20:+.2f} MB",
    )

    assert sum(tally.values()) >= REQUESTS and min(tally.values()) > 0
    assert after["sessions"] == 0 and after["checked_out"] == 0
    assert after["tasks"] <= idle_tasks, "tasks outlived their requests"
    assert growth < RSS_LIMIT and after["rss"] - before["rss"] < RSS_LIMIT
