"""The dispatcher: leases, what a shutdown cuts off, a delivery taken over, periodic jobs."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.db import unit_of_work
from service.jobs import JobRow, drain, enqueue, job, job_name, registry
from service.jobs._admin import ensure_periodic
from service.jobs._outbox import utcnow
from tests.db.models import Widget
from tests.jobs import examples
from tests.jobs.conftest import Serving, eventually, job_rows, widget_names

WAITS = job_name(examples.waits_for_release)


@pytest.mark.service_committing
async def test_a_job_cut_off_by_a_shutdown_is_handed_back_and_runs_after_the_restart(
    serving: Serving, reader: AsyncEngine
) -> None:
    async with serving(BACKGROUND_TASK_SHUTDOWN_TIMEOUT=0.2):
        async with unit_of_work():
            enqueue(examples.waits_for_release, "cut off")

        async def started() -> bool:
            return examples.started["cut off"] == 1

        await eventually(started)
    # Quart waited 0.2 s, then cancelled the job, which rolled back; its row was handed back.
    [row] = await job_rows(reader)
    assert (row.state, row.attempts, row.owner) == ("scheduled", 1, None)
    assert row.due_at <= utcnow()
    assert await widget_names(reader) == []

    examples.release.set()
    async with serving():

        async def done() -> bool:
            return await widget_names(reader) == ["cut off"]

        await eventually(done)
    assert examples.started["cut off"] == 2 and await job_rows(reader) == []


@pytest.mark.service_committing
async def test_a_job_whose_process_died_is_delivered_again_once_its_lease_ends(
    serving: Serving, reader: AsyncEngine
) -> None:
    lease_ends = utcnow() + timedelta(seconds=0.5)
    async with reader.begin() as connection:  # as a process killed while running it left it
        await connection.execute(
            insert(JobRow).values(
                name=WAITS,
                args=["orphan"],
                state="running",
                attempts=1,
                owner="gone:1:000000",
                due_at=lease_ends,
                created_at=utcnow(),
            )
        )
    examples.release.set()
    async with serving():

        async def done() -> bool:
            return await widget_names(reader) == ["orphan"]

        await eventually(done)
        assert utcnow() > lease_ends  # not before its lease ran out
    assert examples.started["orphan"] == 1 and await job_rows(reader) == []


@pytest.mark.service_committing
async def test_a_delivery_whose_job_was_taken_over_commits_nothing(
    serving: Serving, reader: AsyncEngine
) -> None:
    async with serving():
        async with unit_of_work():
            enqueue(examples.waits_for_release, "contested")

        async def started() -> bool:
            return examples.started["contested"] == 1

        await eventually(started)
        async with reader.begin() as connection:  # another process takes it over meanwhile
            await connection.execute(
                update(JobRow)
                .where(JobRow.name == WAITS)
                .values(
                    attempts=JobRow.attempts + 1,
                    state="running",
                    owner="elsewhere:2:000000",
                    due_at=utcnow() + timedelta(hours=1),
                )
            )
        examples.release.set()  # the first delivery goes on: writes, and tries to acknowledge
        await asyncio.sleep(0.5)

    assert await widget_names(reader) == []  # its write was rolled back with its acknowledgement
    [row] = await job_rows(reader)
    assert (row.attempts, row.owner) == (2, "elsewhere:2:000000")  # still the other's


async def _periodic_rows(engine: AsyncEngine, name: str) -> list[tuple[str, int]]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(JobRow.state, JobRow.attempts).where(JobRow.dedupe_key == name)
        )
        return [(row.state, row.attempts) for row in rows]


@pytest.mark.service_committing
async def test_a_periodic_job_has_one_instance_whatever_the_number_of_dispatchers(
    serving: Serving, reader: AsyncEngine
) -> None:
    ticks: list[int] = []

    async def tick() -> None:
        ticks.append(1)
        await Widget(name=f"tick {len(ticks)}").save()

    name = job_name(tick)
    job(every=timedelta(hours=1))(tick)
    try:
        async with serving(), serving():  # two processes' dispatchers, sweeping the same outbox

            async def ran() -> bool:
                return ticks == [1]

            await eventually(ran)
            await asyncio.sleep(0.5)  # ten more sweeps each
            async with reader.connect() as connection:
                due_at = await connection.scalar(
                    select(JobRow.due_at).where(JobRow.dedupe_key == name)
                )
    finally:
        registry.pop(name)

    assert ticks == [1] and await widget_names(reader) == ["tick 1"]
    assert await _periodic_rows(reader, name) == [("scheduled", 0)]  # its next run, one
    assert due_at is not None and due_at > utcnow() + timedelta(minutes=59)


async def test_a_periodic_job_that_dies_is_scheduled_again_for_its_next_period(
    service_connection: AsyncConnection,
) -> None:
    async def broken() -> None:
        raise RuntimeError("always")

    name = job_name(broken)
    job(every=timedelta(hours=1), attempts=2)(broken)
    try:
        async with unit_of_work():
            assert await ensure_periodic([name], utcnow()) == [name]
            assert await ensure_periodic([name], utcnow()) == []  # one instance at most
        await drain()
    finally:
        registry.pop(name)

    rows = await service_connection.execute(
        select(JobRow.state, JobRow.dedupe_key, JobRow.due_at)
        .where(JobRow.name == name)
        .order_by(JobRow.id)
    )
    (dead, _, _), (next_state, key, due_at) = rows.all()
    assert (dead, next_state, key) == ("dead", "scheduled", name)
    assert due_at is not None and due_at > utcnow() + timedelta(minutes=59)


@pytest.mark.service_committing
async def test_a_dispatcher_holds_four_jobs_per_slot_and_leaves_the_rest_to_the_sweepers(
    serving: Serving, reader: AsyncEngine
) -> None:
    async with serving(JOBS_CONCURRENCY=1):
        async with unit_of_work():
            for number in range(10):
                enqueue(examples.waits_for_release, f"job {number}")

        async def one_running() -> bool:
            return sum(examples.started.values()) == 1

        await eventually(one_running)
        states = sorted(row.state for row in await job_rows(reader))
        assert states.count("scheduled") == 6  # due at once, for any sweeper with room
        assert states.count("queued") + states.count("running") == 4  # reserved for this one
        assert sum(examples.started.values()) == 1  # one slot

        examples.release.set()

        async def all_done() -> bool:
            return len(await widget_names(reader)) == 10

        await eventually(all_done)
    assert await job_rows(reader) == [] and set(examples.started.values()) == {1}
