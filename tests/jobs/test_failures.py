"""A failing job: retried with a backoff that doubles, then dead, shown and retried by the CLI."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.db import unit_of_work
from service.jobs import JobRow, drain, enqueue, job_name, registry
from service.jobs._outbox import utcnow
from service.testing import Cli
from tests.db.models import Widget
from tests.jobs import examples
from tests.jobs.conftest import Serving, eventually, job_rows


async def _rows(connection: AsyncConnection, name: str) -> list[Any]:
    """The outbox's rows of job ``name``, read through the test's connection."""
    query = select(JobRow).where(JobRow.name == job_name(registry[name].body))
    return list((await connection.execute(query)).all())


async def _widgets(connection: AsyncConnection) -> list[str]:
    return list((await connection.scalars(select(Widget.name).order_by(Widget.name))).all())


ALWAYS_FAILS = "tests.jobs.examples.always_fails"
FLAKY = "tests.jobs.examples.flaky"


async def test_a_job_that_always_fails_ends_dead_after_its_attempts_and_shows_in_the_cli(
    service_connection: AsyncConnection, service_cli: Cli
) -> None:
    async with unit_of_work():
        enqueue(examples.always_fails, "doomed")

    delivered = await drain()  # every attempt at once, backoffs skipped

    assert (delivered, examples.started["doomed"]) == (1, 3)
    [row] = await _rows(service_connection, ALWAYS_FAILS)
    assert (row.state, row.attempts, row.due_at) == ("dead", 3, None)
    assert row.last_error is not None
    assert row.last_error.splitlines()[-1] == "RuntimeError: attempt 3 failed"
    # The attempts' writes were rolled back; on_failure ran once, when it ended dead.
    assert await _widgets(service_connection) == ["doomed: attempt 3 failed"]

    listed = await service_cli.invoke("jobs", "list")
    assert listed.exit_code == 0, listed.output
    first, error = listed.output.splitlines()
    assert first.startswith(f"{row.id}  dead  {ALWAYS_FAILS}('doomed')  attempts 3  died ")
    assert error.strip() == "RuntimeError: attempt 3 failed"
    scheduled = await service_cli.invoke("jobs", "list", "--state", "scheduled")
    assert scheduled.output.strip() == "no scheduled jobs"


async def test_a_dead_job_retried_from_the_cli_runs_again(
    service_connection: AsyncConnection, service_cli: Cli
) -> None:
    examples.failing.add("shaky")
    async with unit_of_work():
        enqueue(examples.flaky, "shaky")
    await drain()
    [dead] = await _rows(service_connection, FLAKY)
    assert (dead.state, dead.attempts) == ("dead", 2)
    examples.failing.clear()  # whatever made it fail is fixed

    retried = await service_cli.invoke("jobs", "retry", str(dead.id))
    assert retried.exit_code == 0, retried.output
    [again] = await _rows(service_connection, FLAKY)
    assert (again.state, again.attempts) == ("scheduled", 0)  # a serving process's to run
    await drain()

    assert await _rows(service_connection, FLAKY) == []  # done, and acknowledged
    assert await _widgets(service_connection) == ["shaky"]
    assert examples.started["shaky"] == 3
    missing = await service_cli.invoke("jobs", "retry", str(dead.id))
    assert missing.exit_code == 1 and f"no dead or scheduled job {dead.id}" in missing.output


@pytest.mark.service_committing
async def test_a_failed_attempt_waits_for_its_backoff(
    serving: Serving, reader: AsyncEngine
) -> None:
    async with serving():
        async with unit_of_work():
            enqueue(examples.fails_then_waits, "patient")
        failed_at = utcnow()

        async def rescheduled() -> bool:
            return [row.state for row in await job_rows(reader)] == ["scheduled"]

        await eventually(rescheduled)
        [row] = await job_rows(reader)

    assert row.attempts == 1 and examples.started["patient"] == 1
    assert row.last_error.splitlines()[-1] == "RuntimeError: try again in an hour"
    # An hour, jittered by a quarter either way: the sweepers leave it alone until then.
    assert failed_at + timedelta(minutes=44) < row.due_at < utcnow() + timedelta(minutes=76)


def test_the_backoff_doubles_after_each_failed_attempt_up_to_an_hour() -> None:
    flaky = registry[FLAKY]  # backoff: 1 s
    for attempt, seconds in [(1, 1), (2, 2), (3, 4), (4, 8), (10, 512)]:
        delay = flaky.retry_delay(attempt).total_seconds()
        assert 0.75 * seconds <= delay <= 1.25 * seconds, (attempt, delay)
    assert flaky.retry_delay(30) == timedelta(hours=1)


async def test_on_failure_runs_only_when_the_job_ends_dead_and_the_body_is_rolled_back(
    service_connection: AsyncConnection,
) -> None:
    async with unit_of_work():
        enqueue(examples.add_widget, "half", True)

    await drain()

    assert await _widgets(service_connection) == ["half: failed after writing"]
    [row] = await _rows(service_connection, "tests.jobs.examples.add_widget")
    assert (row.state, row.attempts) == ("dead", 1)
