"""Round trips to PostgreSQL per request, issue 12's targets: a deposit at most 5, a GET at most 3.

Through PgBouncer in transaction mode (``make test-pgbouncer``) no statement stays
prepared: each is prepared in an exchange of its own before it runs, one more round
trip per statement (issue 22, docs/replicas.md), so the targets are 8 and 4.

Counted with ``bench.roundtrips.count_round_trips()`` (SQLAlchemy's engine and
pool events, exact for asyncpg: every statement, its prepare when the
connection has not prepared it yet, BEGIN, COMMIT, the pool's pre-ping). The
tests commit for real (``service_committing``), so that a request makes the
round trips it makes in production: a pooled connection checked out (and
pre-pinged), BEGIN, its statements, COMMIT. They count the steady state: the
request once more on connections that have already served it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from quart.typing import TestClientProtocol as Client
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.roundtrips import RoundTrips, count_round_trips
from service.db._server import PING_AFTER
from service.ledger.factories import UserFactory
from tests.databases import PGBOUNCER

pytestmark = pytest.mark.service_committing

Request = Callable[[], Awaitable[Any]]
DEPOSIT, GET = (8, 4) if PGBOUNCER else (5, 3)


@pytest.fixture
def postgresql(service_engine: AsyncEngine) -> None:
    if service_engine.dialect.name != "postgresql":
        pytest.skip("round trips are counted on PostgreSQL")


async def _account(client: Client) -> tuple[dict[str, str], int]:
    """A user's headers, and an account of theirs with money on it."""
    _, token = await UserFactory.create_with_token()
    headers = {"Authorization": f"Bearer {token}"}
    made = await client.post("/accounts", json={"name": "Main", "currency": "USD"}, headers=headers)
    assert made.status_code == 201
    account_id: int = (await made.get_json())["id"]
    funded = await client.post(
        f"/accounts/{account_id}/deposits", json={"amount": 10_000}, headers=headers
    )
    assert funded.status_code == 201
    return headers, account_id


async def _counted(request: Request, expected_status: int) -> RoundTrips:
    """The round trips of ``request`` once each pooled connection has served it before.

    The pool hands connections out in FIFO order: warm up until one comes round
    again, so that every connection in rotation has prepared the request's
    statements and was checked in while the counter watched.
    """
    with count_round_trips() as trips:
        for _ in range(20):
            assert (await request()).status_code == expected_status
            if len(set(trips.checkouts)) < len(trips.checkouts):
                break
        trips.clear()
        response = await request()
    assert response.status_code == expected_status
    return trips


@pytest.mark.usefixtures("postgresql")
async def test_a_deposit_makes_at_most_5_round_trips(service_client: Client) -> None:
    headers, account_id = await _account(service_client)

    def deposit() -> Awaitable[Any]:
        path = f"/accounts/{account_id}/deposits"
        return service_client.post(path, json={"amount": 100}, headers=headers)

    trips = await _counted(deposit, 201)

    assert trips.count <= DEPOSIT, f"a deposit made {trips.count} round trips:\n{trips}"


@pytest.mark.usefixtures("postgresql")
async def test_a_get_makes_at_most_3_round_trips(service_client: Client) -> None:
    headers, account_id = await _account(service_client)

    def read() -> Awaitable[Any]:
        return service_client.get(f"/accounts/{account_id}", headers=headers)

    trips = await _counted(read, 200)

    assert trips.count <= GET, f"a GET made {trips.count} round trips:\n{trips}"
    assert "BEGIN" not in trips.exchanges  # a read-only unit of work runs in autocommit


@pytest.mark.usefixtures("postgresql")
async def test_a_connection_idle_for_a_while_costs_one_round_trip_more_its_check(
    service_client: Client,
) -> None:
    headers, account_id = await _account(service_client)

    def read() -> Awaitable[Any]:
        return service_client.get(f"/accounts/{account_id}", headers=headers)

    busy = await _counted(read, 200)
    await asyncio.sleep(PING_AFTER + 0.1)
    with count_round_trips() as idle:
        assert (await read()).status_code == 200

    assert idle.count == busy.count + 1, f"after a pause:\n{idle}"
    assert idle.exchanges[0].startswith("ping")
