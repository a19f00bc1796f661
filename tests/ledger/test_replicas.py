"""The service with a read replica: a user reads their own writes while the replica lags.

The service names the authenticated user as the caller (``service.ledger.auth``),
so a user's reads see their writes through Redis, whatever the client sends; its
tokens are looked up where the user's writes are (a revocation counts), and a
token the replica does not have yet is looked up on the primary.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta

import pytest
from quart import Quart
from quart.typing import TestClientProtocol as Client
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from bench.harness import prepare_database
from service.app import create_app, db
from service.db import ReplicaStats, unit_of_work
from service.jobs import drain
from service.ledger import auth
from service.ledger.statements import request_statement
from tests.ledger.conftest import Api, Caller
from tests.replication import CAUSAL_REDIS_URL, Replication
from tests.test_metrics import PORT as METRICS_PORT
from tests.test_metrics import moved, samples, value

pytestmark = pytest.mark.service_committing

LEDGER = "ledger_replicated"


@pytest.fixture(scope="module")
async def _migrated(_replication: Replication) -> str:
    url = _replication.primary.url(LEDGER)
    await prepare_database(url)
    return url


@pytest.fixture
async def ledger(replication: Replication, _migrated: str) -> AsyncIterator[tuple[Api, Quart]]:
    await asyncio.to_thread(replication.wait_replayed)
    app = create_app(
        {
            "DATABASE_URL": _migrated,
            "DATABASE_REPLICA_URLS": replication.replica.url(LEDGER),
            "DATABASE_CAUSAL_REDIS_URL": CAUSAL_REDIS_URL,
            "DATABASE_REPLICA_POLL_INTERVAL": 0.05,
            "DATABASE_PGBOUNCER": False,
            "JOBS_BACKEND": "eager",
            "RATE_LIMIT_ENABLED": False,
            "ACCESS_LOG": False,
            "METRICS_PORT": METRICS_PORT,
        }
    )
    async with app.test_app():
        yield Api(app.test_client()), app


async def _stats(app: Quart) -> ReplicaStats:
    async with app.app_context():
        stats = db.replica_stats
    assert stats is not None
    return stats


async def _ready(api: Api, replication: Replication) -> tuple[Caller, int, Caller]:
    """Two users, one with an account, replayed by the replica; then it stops replaying."""
    ada = await api.user()
    account = await api.account(ada)
    grace = await api.user("Grace")
    await asyncio.to_thread(replication.wait_replayed)
    await asyncio.sleep(0.2)  # the poller has seen it
    await asyncio.to_thread(replication.replica.pause_replay)
    return ada, account, grace


async def _balance(client: Client, caller: Caller, account: int) -> int:
    response = await client.get(f"/accounts/{account}", headers=caller.headers)
    assert response.status_code == 200, await response.get_data()
    balance: int = (await response.get_json())["balance"]
    return balance


async def test_a_user_reads_their_deposit_while_the_replica_lags(
    ledger: tuple[Api, Quart], replication: Replication
) -> None:
    api, app = ledger
    ada, account, _ = await _ready(api, replication)
    reads_before = (await _stats(app)).reads["primary"]

    deposited = await api.deposit(ada, account, 700)

    assert deposited.status_code == 201
    assert await _balance(api.client, ada, account) == 700  # no header sent: Redis has it
    assert (await _stats(app)).reads["primary"] > reads_before


async def test_another_users_read_is_served_by_the_lagging_replica(
    ledger: tuple[Api, Quart], replication: Replication
) -> None:
    api, app = ledger
    ada, account, grace = await _ready(api, replication)
    replica = f"127.0.0.1:{replication.replica.port}/{LEDGER}"
    await api.deposit(ada, account, 700)
    served = (await _stats(app)).reads[replica]

    response = await api.client.get("/accounts", headers=grace.headers)

    assert response.status_code == 200
    assert (await _stats(app)).reads[replica] == served + 1
    await asyncio.to_thread(replication.replica.resume_replay)
    await asyncio.to_thread(replication.wait_replayed)
    await asyncio.sleep(0.2)
    assert await _balance(api.client, ada, account) == 700
    assert (await _stats(app)).reads[replica] == served + 2  # caught up: Ada's too


async def test_the_metrics_count_reads_by_server_and_fallbacks_and_show_the_lag(
    ledger: tuple[Api, Quart], replication: Replication
) -> None:
    api, app = ledger
    replica = f"127.0.0.1:{replication.replica.port}/{LEDGER}"
    ada, account, grace = await _ready(api, replication)
    before = await samples(app)

    await api.deposit(ada, account, 700)
    await _balance(api.client, ada, account)  # the replica is behind Ada: the primary
    await api.client.get("/accounts", headers=grace.headers)  # Grace: the replica
    await asyncio.sleep(0.3)  # polls see the replica fall behind the deposit
    after = await samples(app)

    reads, fallbacks = "service_db_replica_reads_total", "service_db_replica_fallbacks_total"
    assert moved(before, after, reads, server="primary") >= 1
    assert moved(before, after, fallbacks, reason="behind") >= 1
    assert moved(before, after, reads, server=replica) >= 1
    assert value(after, "service_db_replica_in_rotation", replica=replica) == 1
    assert value(after, "service_db_replica_lag_seconds", replica=replica) >= 0.2


@pytest.mark.parametrize("known", [True, False], ids=["owner known", "owner unknown"])
async def test_a_revoked_token_is_refused_although_the_replica_still_has_it(
    ledger: tuple[Api, Quart], replication: Replication, known: bool
) -> None:
    api, _ = ledger
    ada = await api.user()
    second = await api.client.post("/tokens", json={"name": "second"}, headers=ada.headers)
    assert second.status_code == 201
    stolen = Caller(ada.id, (await second.get_json())["token"])
    token_id = (await second.get_json())["id"]
    assert (await api.client.get("/users/me", headers=stolen.headers)).status_code == 200
    await asyncio.to_thread(replication.wait_replayed)
    await asyncio.sleep(0.2)
    await asyncio.to_thread(replication.replica.pause_replay)

    revoked = await api.client.delete(f"/tokens/{token_id}", headers=ada.headers)
    if not known:  # a process that never saw the token: it learns the owner from the row
        auth._owners.clear()

    assert revoked.status_code == 204
    assert (await api.client.get("/users/me", headers=stolen.headers)).status_code == 401


async def test_a_token_made_while_the_replica_lags_works_at_once(
    ledger: tuple[Api, Quart], replication: Replication
) -> None:
    api, _ = ledger
    ada, _, _ = await _ready(api, replication)

    made = await api.client.post("/tokens", json={"name": "new"}, headers=ada.headers)
    fresh = Caller(ada.id, (await made.get_json())["token"])
    newcomer = await api.user("Newcomer")  # registered while the replica lags

    assert (await api.client.get("/users/me", headers=fresh.headers)).status_code == 200
    assert (await api.client.get("/users/me", headers=newcomer.headers)).status_code == 200


async def _deposited_yesterday(
    api: Api, caller: Caller, account: int, amount: int, replication: Replication
) -> str:
    """A deposit through the API, dated yesterday on the primary: a statement covers only a
    period that has ended. Both writes are newer than the paused replica."""
    assert (await api.deposit(caller, account, amount)).status_code == 201
    primary = create_async_engine(replication.primary.url(LEDGER), isolation_level="AUTOCOMMIT")
    try:
        async with primary.connect() as connection:
            await connection.execute(
                text(
                    "UPDATE entries SET created_at = created_at - interval '1 day'"
                    " WHERE account_id = :account"
                ),
                {"account": account},
            )
    finally:
        await primary.dispose()
    return (datetime.now(UTC).date() - timedelta(days=1)).isoformat()


async def test_a_statement_job_enqueued_after_a_deposit_sees_it_while_the_replica_lags(
    ledger: tuple[Api, Quart], replication: Replication
) -> None:
    api, _ = ledger
    ada, account, _ = await _ready(api, replication)
    yesterday = await _deposited_yesterday(api, ada, account, 1_250, replication)

    asked = await api.client.post(
        f"/accounts/{account}/statements",
        json={"from": yesterday, "to": yesterday},
        headers=ada.headers,
    )
    assert asked.status_code == 202, await asked.get_data()
    statement = await api.client.get(
        f"/statements/{(await asked.get_json())['id']}", headers=ada.headers
    )

    figures = await statement.get_json()
    assert (figures["status"], figures["entry_count"], figures["closing_balance"]) == (
        "ready",
        1,
        1_250,
    )
    primary = create_async_engine(replication.primary.url(LEDGER))
    try:
        async with primary.connect() as connection:
            stored = await connection.scalar(
                text("SELECT closing_balance FROM statements WHERE id = :id"),
                {"id": figures["id"]},
            )
    finally:
        await primary.dispose()
    assert stored == 1_250


async def test_a_statement_job_taken_from_the_outbox_later_reads_from_its_claims_position(
    ledger: tuple[Api, Quart], replication: Replication
) -> None:
    """Not kicked by its enqueuer's process: a sweeper (here ``drain``) takes it, in a task
    that knows nothing of the enqueuer. Its claim's WAL position is its floor."""
    api, app = ledger
    ada, account, _ = await _ready(api, replication)
    yesterday = date.fromisoformat(await _deposited_yesterday(api, ada, account, 900, replication))
    async with app.app_context():
        engine = db.engine
    async with unit_of_work(bind=engine):  # outside any request: the job waits in the outbox
        statement = await request_statement(ada.id, account, yesterday, yesterday)

    assert await drain(bind=engine) == 1
    response = await api.client.get(f"/statements/{statement.id}", headers=ada.headers)
    figures = await response.get_json()
    assert (figures["status"], figures["closing_balance"]) == ("ready", 900)
