"""Jobs on Celery: a real ``service worker`` on Redis, started here; and eager tasks in addition.

Redis is a real component of this suite: with ``CI=true`` an unreachable one
fails the run.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from quart.typing import TestClientProtocol as Client
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.harness import free_port
from service import worker
from service.app import create_app
from service.db import session, unit_of_work
from service.jobs import DELIVER_TASK, JobRow, enqueue, job
from service.ledger.factories import AccountFactory, UserFactory
from service.ledger.models import Entry, Statement, utcnow
from service.ledger.statements import request_statement
from tests.conftest import REDIS_URL, Broker
from tests.databases import PGBOUNCER
from tests.db.models import Part
from tests.test_metrics import parse, value
from tests.workers import celery_worker


def service_worker(
    broker: Broker, database_url: str, *options: str
) -> AbstractAsyncContextManager[None]:
    """``service worker``, two forked processes, consuming the test's own queue."""
    command = [str(Path(sys.executable).parent / "service"), "worker", "--concurrency=2"]
    return celery_worker([*command, *options], broker, database_url)


@pytest.fixture
async def worker_process(broker: Broker, service_database_url: str) -> AsyncIterator[None]:
    async with service_worker(broker, service_database_url):
        yield


@pytest.mark.service_committing
@pytest.mark.usefixtures("worker_process")
async def test_a_real_worker_computes_a_statement_end_to_end(
    broker: Broker, service_database_url: str
) -> None:
    app = create_app(
        {
            "DATABASE_URL": service_database_url,
            "CELERY_BROKER_URL": broker.url,
            "CELERY_QUEUE": broker.queue,
            "JOBS_BACKEND": None,  # chosen from the broker: celery
        }
    )
    async with app.test_app():
        client: Client = app.test_client()
        user = await client.post("/users", json={"name": "Ada", "email": "ada@example.com"})
        headers = {"Authorization": f"Bearer {(await user.get_json())['token']}"}
        account = (
            await (
                await client.post(
                    "/accounts", json={"name": "M", "currency": "USD"}, headers=headers
                )
            ).get_json()
        )["id"]
        await client.post(f"/accounts/{account}/deposits", json={"amount": 250}, headers=headers)
        # A statement is of a period that has ended: the deposit is dated yesterday.
        yesterday = utcnow() - timedelta(days=1)
        async with unit_of_work():
            await session.execute(
                update(Entry).where(Entry.account_id == account).values(created_at=yesterday)
            )
        asked = await client.post(
            f"/accounts/{account}/statements",
            json={"from": "2000-01-01", "to": yesterday.date().isoformat()},
            headers=headers,
        )
        assert asked.status_code == 202
        statement_id = (await asked.get_json())["id"]

        body: dict[str, Any] = {"status": "pending"}
        async with asyncio.timeout(30):
            while body["status"] == "pending":
                await asyncio.sleep(0.1)
                response = await client.get(f"/statements/{statement_id}", headers=headers)
                body = await response.get_json()

    assert body["status"] == "ready", body
    assert (body["total_in"], body["closing_balance"], body["entry_count"]) == (250, 250, 1)


@pytest.fixture
def eager(
    broker: Broker, service_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    """A Celery app of the worker's making that runs tasks in the caller (``task_always_eager``).

    Jobs enqueued in the test body go to the broker (``CELERY_BROKER_URL``), as from a
    ``service`` command; the test then delivers their message with this app.
    """
    monkeypatch.setenv("DATABASE_URL", service_database_url)
    monkeypatch.setenv("CELERY_BROKER_URL", broker.url)
    monkeypatch.setenv("CELERY_QUEUE", broker.queue)
    celery = worker.celery_for.__wrapped__(broker.url, broker.queue)
    celery.conf.task_always_eager = True
    yield celery
    worker._dispose()  # this process's loop and engine, as a worker process's shutdown does
    redis.Redis.from_url(REDIS_URL).delete(broker.queue)  # the messages nobody consumed


async def _requested_statement() -> tuple[int, int]:
    """A statement requested as the API does; its id and its job's."""
    async with unit_of_work():
        user = await UserFactory.create_async()
        account = await AccountFactory.create_async(user_id=user.id)
        statement = await request_statement(user.id, account.id, _day(), _day())
    async with unit_of_work():
        rows = await session.execute(select(JobRow.id, JobRow.args))
        job_id = next(id for id, args in rows if args == [statement.id])
    assert job_id is not None
    return statement.id, job_id


@job(attempts=1)
async def add_an_orphan_part() -> None:
    """Its foreign key is checked at COMMIT: a job whose commit fails."""
    await Part(widget_id=2_000_000_000).save()


def _day() -> Any:
    from datetime import date

    return date(2026, 1, 1)


async def _status(engine: AsyncEngine, statement_id: int) -> str | None:
    async with engine.connect() as connection:
        return await connection.scalar(select(Statement.status).filter_by(id=statement_id))


async def _job(engine: AsyncEngine, job_id: int) -> Any:
    async with engine.connect() as connection:
        return (await connection.execute(select(JobRow).filter_by(id=job_id))).first()


@pytest.mark.service_committing
async def test_a_task_claims_runs_and_acknowledges_its_job_in_one_commit(
    eager: Any, service_engine: AsyncEngine
) -> None:
    statement_id, job_id = await _requested_statement()
    queued = await _job(service_engine, job_id)
    assert (queued.state, queued.attempts) == ("queued", 1)  # reserved for the message sent
    task = eager.tasks[DELIVER_TASK]

    result = await asyncio.to_thread(task.apply, args=[job_id, 1])
    again = await asyncio.to_thread(task.apply, args=[job_id, 1])  # the broker delivers twice

    assert result.successful(), result.traceback
    assert (result.result, again.result) == ("done", None)
    assert await _status(service_engine, statement_id) == "ready"
    assert await _job(service_engine, job_id) is None  # acknowledged with the statement's figures


@pytest.mark.service_committing
async def test_a_task_whose_body_fails_records_the_failed_attempt_in_the_outbox(
    eager: Any, service_engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    statement_id, job_id = await _requested_statement()
    write = Statement.update

    async def write_then_fail(self: Statement, **values: Any) -> Statement:
        await write(self, **values)
        if values.get("status") == "ready":
            raise RuntimeError("died after writing")
        return self

    monkeypatch.setattr(Statement, "update", write_then_fail)
    task = eager.tasks[DELIVER_TASK]

    result = await asyncio.to_thread(task.apply, args=[job_id, 1])

    assert result.result == "retry"
    assert await _status(service_engine, statement_id) == "pending"  # the body's writes undone
    row = await _job(service_engine, job_id)
    assert (row.state, row.attempts) == ("scheduled", 1)
    assert "RuntimeError: died after writing" in row.last_error


@pytest.mark.service_committing
async def test_a_failed_commit_is_a_failed_attempt(eager: Any, service_engine: AsyncEngine) -> None:
    async with unit_of_work():
        enqueue(add_an_orphan_part)
    async with service_engine.connect() as connection:
        job_id = await connection.scalar(
            select(JobRow.id).filter_by(name=f"{__name__}.add_an_orphan_part")
        )
    assert job_id is not None

    result = await asyncio.to_thread(eager.tasks[DELIVER_TASK].apply, args=[job_id, 1])

    assert result.result == "dead"  # its only attempt
    row = await _job(service_engine, job_id)
    assert row.state == "dead" and "IntegrityError" in row.last_error
    async with service_engine.connect() as connection:
        assert (await connection.scalars(select(Part.id))).all() == []


FORK = """
import gc, os, sys
from celery.signals import worker_process_init
from sqlalchemy import text
from service.worker import _Process

async def backend_pid(engine):
    async with engine.connect() as connection:
        query = "SELECT pg_backend_pid()" if engine.dialect.name == "postgresql" else "SELECT 1"
        return await connection.scalar(text(query))

loop, engine = _Process.runtime()
before = loop.run_until_complete(backend_pid(engine))  # the pool keeps this connection
child = os.fork()
if child == 0:
    worker_process_init.send(sender=None)  # what Celery sends in a new worker process
    gc.collect()  # whatever the child let go of is finalized now, not at some later moment
    child_loop, child_engine = _Process.runtime()
    assert child_engine is not engine
    mine = child_loop.run_until_complete(backend_pid(child_engine))
    os._exit(0 if engine.dialect.name != "postgresql" or mine != before else 3)
_, status = os.waitpid(child, 0)
after = loop.run_until_complete(backend_pid(engine))  # the parent's connection still works
print("child", os.waitstatus_to_exitcode(status), "same connection", after == before)
"""


@pytest.mark.service_committing  # the processes need connections of their own
async def test_a_forked_worker_process_leaves_its_parents_connections_alone(
    service_database_url: str,
) -> None:
    if PGBOUNCER:
        pytest.skip("backend pids name PgBouncer's server connections, which its clients share")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        FORK,
        # A parent whose connection was cut off waits for an answer: not for 30 s.
        env={**os.environ, "DATABASE_URL": service_database_url, "DATABASE_COMMAND_TIMEOUT": "5"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    assert process.returncode == 0, output.decode()
    assert "child 0 same connection True" in output.decode()


@pytest.mark.service_committing
async def test_the_workers_deliveries_are_on_its_own_metrics_port(
    broker: Broker, service_database_url: str, service_engine: AsyncEngine
) -> None:
    port = free_port()
    statements: list[int] = []
    async with service_worker(broker, service_database_url, f"--metrics-port={port}"):
        app = create_app(
            {
                "DATABASE_URL": service_database_url,
                "CELERY_BROKER_URL": broker.url,
                "CELERY_QUEUE": broker.queue,
                "JOBS_BACKEND": None,  # chosen from the broker: celery
            }
        )
        async with app.test_app(), app.app_context():  # the app's jobs go to Celery
            for _ in range(6):  # enough for both processes of the pool, most likely
                statement_id, _ = await _requested_statement()
                statements.append(statement_id)
        ready: list[str | None] = []
        async with asyncio.timeout(30):
            while ready != ["ready"] * 6:
                await asyncio.sleep(0.1)
                ready = [await _status(service_engine, s) for s in statements]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            scrape = await client.get("/metrics")

    assert scrape.status_code == 200
    found = parse(scrape.text)
    job = "service.ledger.statements.compute_statement"
    assert value(found, "service_jobs_deliveries_total", job=job, outcome="done") == 6, [
        key for key in found if key[0].startswith("service_jobs")
    ]
    assert value(found, "service_db_units_of_work_total", entry="job", outcome="committed") >= 6
