"""enqueue(): a job exists if and only if its unit of work committed, and never runs before."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.db import UnitOfWorkError, unit_of_work
from service.jobs import JobRow, enqueue
from tests.jobs import examples
from tests.jobs.conftest import Serving, eventually, job_rows, widget_names


async def test_enqueue_outside_a_unit_of_work_says_what_to_do() -> None:
    with pytest.raises(UnitOfWorkError, match="async with unit_of_work"):
        enqueue(examples.add_widget, "nowhere")


async def test_only_registered_jobs_can_be_enqueued() -> None:
    async def not_a_job() -> None:
        pass

    with pytest.raises(LookupError, match="@job"):
        async with unit_of_work():
            enqueue(not_a_job)


async def test_the_arguments_must_be_json_and_are_refused_at_the_call(
    service_connection: AsyncConnection,
) -> None:
    with pytest.raises(TypeError, match="JSON-serializable"):
        async with unit_of_work():
            enqueue(examples.add_widget, {1, 2})


@pytest.mark.service_committing
async def test_a_job_enqueued_in_a_rolled_back_unit_never_runs(
    serving: Serving, reader: AsyncEngine
) -> None:
    async with serving():
        with pytest.raises(LookupError):
            async with unit_of_work():
                enqueue(examples.add_widget, "rolled back")
                raise LookupError
        async with unit_of_work():
            async with unit_of_work():  # a savepoint
                enqueue(examples.add_widget, "in a savepoint")
            with pytest.raises(LookupError):
                async with unit_of_work():  # a savepoint rolled back
                    enqueue(examples.add_widget, "in a rolled-back savepoint")
                    raise LookupError
        async with unit_of_work():
            enqueue(examples.add_widget, "committed")

        async def both_done() -> bool:
            return len(await widget_names(reader)) == 2

        await eventually(both_done)
        await asyncio.sleep(0.3)  # six more sweeps: nothing else turns up

    assert await widget_names(reader) == ["committed", "in a savepoint"]
    assert set(examples.started) == {"committed", "in a savepoint"}
    assert await job_rows(reader) == []  # both acknowledged, no other row written


@pytest.mark.service_committing
async def test_no_job_runs_before_its_commit(serving: Serving, reader: AsyncEngine) -> None:
    async with serving():
        async with unit_of_work():
            enqueue(examples.add_widget, "after the commit")
            await JobRow.query.count()  # flushes: the row is written, in this transaction only
            assert await job_rows(reader) == []  # invisible to anyone else
            await asyncio.sleep(0.3)  # six sweeps
            assert examples.started == {}

        async def done() -> bool:
            return await widget_names(reader) == ["after the commit"]

        await eventually(done)
    assert examples.started == {"after the commit": 1}


@pytest.mark.service_committing
async def test_a_job_enqueued_where_no_dispatcher_runs_is_delivered_by_a_sweeper(
    serving: Serving, reader: AsyncEngine
) -> None:
    async with unit_of_work(bind=reader):  # as a `service` command: no dispatcher here
        enqueue(examples.add_widget, "from a script")
    [row] = await job_rows(reader)
    assert (row.state, row.attempts) == ("scheduled", 0)

    async with serving():

        async def done() -> bool:
            return await widget_names(reader) == ["from a script"]

        await eventually(done)
    assert await job_rows(reader) == []


@pytest.mark.service_committing
async def test_a_job_runs_with_the_data_it_was_enqueued_with_in_its_own_unit_of_work(
    serving: Serving, reader: AsyncEngine
) -> None:
    async with serving():
        async with unit_of_work():
            enqueue(examples.add_widget, "late", False, 0.3)
        [row] = await job_rows(reader)
        assert (row.state, row.args) == ("queued", ["late", False, 0.3])  # reserved, running
    # Shutdown awaited the job: its write and its acknowledgement committed together.
    assert await widget_names(reader) == ["late"]
    assert await job_rows(reader) == []
