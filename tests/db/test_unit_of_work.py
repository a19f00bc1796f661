"""unit_of_work() and on_commit() outside requests: scripts, jobs, tests."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

from service.db import UnitOfWorkError, on_commit, session, unit_of_work
from tests.db.conftest import ReadNames
from tests.db.models import Widget

# Outside a unit of work -------------------------------------------------------------------------


async def test_the_session_outside_a_unit_of_work_fails_and_says_how_to_fix_it() -> None:
    with pytest.raises(UnitOfWorkError, match=r"outside a unit of work.*unit_of_work\(\)"):
        await Widget.create(name="nowhere")
    with pytest.raises(UnitOfWorkError):
        session()
    assert session.registry.registry == {}


async def test_a_child_task_of_a_unit_of_work_is_refused(stored_names: ReadNames) -> None:
    async with unit_of_work():
        with pytest.raises(UnitOfWorkError, match="child task"):
            await asyncio.create_task(Widget.create(name="orphan"))
        await Widget.create(name="parent")
    assert await stored_names() == ["parent"]
    assert session.registry.registry == {}


@pytest.mark.service_committing  # concurrent units of work need connections of their own
async def test_a_decorated_coroutine_is_a_unit_of_work_in_any_task(
    stored_names: ReadNames,
) -> None:
    @unit_of_work()
    async def add(name: str) -> int:
        return (await Widget.create(name=name)).id

    ids = await asyncio.gather(add("a"), add("b"), add("c"))

    assert len(set(ids)) == 3
    assert await stored_names() == ["a", "b", "c"]
    assert session.registry.registry == {}


# Commit and rollback ----------------------------------------------------------------------------


@pytest.mark.service_committing
async def test_success_commits(stored_names: ReadNames) -> None:
    async with unit_of_work():
        await Widget.create(name="kept")
    assert await stored_names() == ["kept"]
    assert session.registry.registry == {}


@pytest.mark.service_committing
async def test_an_exception_rolls_back_and_propagates(stored_names: ReadNames) -> None:
    with pytest.raises(LookupError):
        async with unit_of_work():
            await Widget.create(name="dropped")
            raise LookupError
    assert await stored_names() == []
    assert session.registry.registry == {}


@pytest.mark.service_committing
async def test_core_writes_are_committed_too(stored_names: ReadNames) -> None:
    # Not only the ORM's dirty objects: whatever the session executed.
    async with unit_of_work():
        await session.execute(insert(Widget).values(name="core", size=1))
    assert await stored_names() == ["core"]


async def test_a_nested_unit_of_work_is_a_savepoint(stored_names: ReadNames) -> None:
    async with unit_of_work():
        await Widget.create(name="outer")
        with pytest.raises(LookupError):
            async with unit_of_work():
                await Widget.create(name="inner-dropped")
                raise LookupError
        async with unit_of_work():
            await Widget.create(name="inner-kept")
    assert await stored_names() == ["inner-kept", "outer"]


async def test_a_failed_save_in_a_savepoint_rolls_back_that_savepoint_only(
    stored_names: ReadNames,
) -> None:
    async with unit_of_work():
        await Widget.create(name="taken")
    async with unit_of_work():
        await Widget.create(name="before")
        with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
            async with unit_of_work():
                await Widget.create(name="taken")
        # The savepoint contained its failure: the earlier write stays, the session is usable.
        await Widget.create(name="after")
    assert await stored_names() == ["after", "before", "taken"]


async def test_a_unit_of_work_object_is_not_reentrant() -> None:
    unit = unit_of_work()
    async with unit:
        with pytest.raises(UnitOfWorkError, match="not reentrant"):
            async with unit:
                pass


# Removal and cancellation -----------------------------------------------------------------------


@pytest.mark.service_committing
async def test_a_session_that_fails_to_close_is_still_removed_and_the_commit_stands(
    monkeypatch: pytest.MonkeyPatch, stored_names: ReadNames, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken_close(self: AsyncSession) -> None:
        raise ConnectionResetError("close failed")

    monkeypatch.setattr(AsyncSession, "close", broken_close)
    async with unit_of_work():
        await Widget.create(name="committed")
    monkeypatch.undo()

    assert session.registry.registry == {}
    with pytest.raises(UnitOfWorkError):
        session()  # the task left the unit of work too
    assert await stored_names() == ["committed"]
    assert "cleaning up the session failed" in caplog.text


@pytest.mark.service_committing
async def test_cancellation_during_commit_lets_the_commit_finish(
    stored_names: ReadNames, monkeypatch: pytest.MonkeyPatch
) -> None:
    commit = AsyncSession.commit
    committing = asyncio.Event()

    async def slow_commit(self: AsyncSession) -> None:
        committing.set()
        await asyncio.sleep(0.3)  # a COMMIT on its way to the server
        await commit(self)

    monkeypatch.setattr(AsyncSession, "commit", slow_commit)

    async def work() -> None:
        async with unit_of_work():
            await Widget.create(name="committed")

    task = asyncio.create_task(work())
    await asyncio.wait_for(committing.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    # The outcome is known, not half done: the commit completed before the
    # cancellation was let through.
    assert await stored_names() == ["committed"]
    assert session.registry.registry == {}


@pytest.mark.service_committing
async def test_cancellation_before_commit_rolls_back(stored_names: ReadNames) -> None:
    started = asyncio.Event()

    async def work() -> None:
        async with unit_of_work():
            await Widget.create(name="dropped")
            started.set()
            await asyncio.sleep(10)

    task = asyncio.create_task(work())
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert await stored_names() == []
    assert session.registry.registry == {}


# on_commit --------------------------------------------------------------------------------------


def _recorder() -> tuple[list[str], Callable[[str], Callable[[], None]]]:
    calls: list[str] = []

    def record(name: str) -> Callable[[], None]:
        return lambda: calls.append(name)

    return calls, record


@pytest.mark.service_committing
async def test_on_commit_runs_once_after_the_commit_and_outside_the_unit_of_work(
    stored_names: ReadNames,
) -> None:
    calls, record = _recorder()

    async def write_in_a_unit_of_its_own() -> None:
        # Runs after the unit of work has ended, so this is a new, outermost
        # unit of work that commits; not a savepoint of a finished session.
        async with unit_of_work():
            await Widget.create(name=f"follow-up-of-{await Widget.query.count()}")

    async with unit_of_work():
        await Widget.create(name="a")
        on_commit(record("sync"))
        on_commit(write_in_a_unit_of_its_own)
        assert calls == []

    assert calls == ["sync"]
    assert await stored_names() == ["a", "follow-up-of-1"]


async def test_on_commit_never_runs_after_a_rollback() -> None:
    calls, record = _recorder()
    with pytest.raises(LookupError):
        async with unit_of_work():
            on_commit(record("never"))
            raise LookupError
    assert calls == []


async def test_on_commit_in_a_rolled_back_savepoint_is_dropped() -> None:
    calls, record = _recorder()
    async with unit_of_work():
        on_commit(record("outer"))
        with pytest.raises(LookupError):
            async with unit_of_work():
                on_commit(record("nested-unit"))
                raise LookupError
        savepoint = await session.begin_nested()
        on_commit(record("begin-nested"))
        await savepoint.rollback()
        async with unit_of_work():
            on_commit(record("released"))
            async with unit_of_work():
                on_commit(record("released-deeper"))
        assert calls == []  # releasing a savepoint is not the commit
    assert calls == ["outer", "released", "released-deeper"]


async def test_on_commit_is_dropped_when_an_outer_savepoint_rolls_back() -> None:
    calls, record = _recorder()
    async with unit_of_work():
        with pytest.raises(LookupError):
            async with unit_of_work():
                async with unit_of_work():
                    on_commit(record("inner-released-outer-rolled-back"))
                raise LookupError
    assert calls == []


async def test_on_commit_is_dropped_by_a_failed_save() -> None:
    calls, record = _recorder()
    async with unit_of_work():
        await Widget.create(name="taken")
    async with unit_of_work():
        on_commit(record("before-the-failure"))
        with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
            await Widget.create(name="taken")
        on_commit(record("after-the-failure"))
    assert calls == ["after-the-failure"]


async def test_a_failing_callback_is_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls, record = _recorder()

    def fail() -> None:
        raise ValueError("callback failed")

    async def later() -> None:
        calls.append("async")

    async with unit_of_work():
        on_commit(fail)
        on_commit(later)
        on_commit(record("sync"))

    assert calls == ["async", "sync"]
    assert any(
        record.levelno == logging.ERROR and "on_commit" in record.getMessage()
        for record in caplog.records
    )


async def test_on_commit_outside_a_unit_of_work_fails() -> None:
    callback: Callable[[], Awaitable[Any]] = asyncio.sleep  # type: ignore[assignment]
    with pytest.raises(UnitOfWorkError):
        on_commit(callback)


async def test_a_cancelled_caller_of_a_failing_shielded_call_is_still_cancelled() -> None:
    from service.db._unit import run_to_completion

    started = asyncio.Event()

    async def fails_later() -> None:
        started.set()
        await asyncio.sleep(0.1)
        raise ValueError("the shielded work failed")

    caller = asyncio.create_task(run_to_completion(fails_later()))
    await started.wait()
    caller.cancel()

    with pytest.raises(asyncio.CancelledError) as raised:
        await caller
    assert isinstance(raised.value.__cause__, ValueError)


async def test_a_unit_of_work_exited_in_another_task_is_refused_and_rolled_back(
    stored_names: ReadNames,
) -> None:
    unit = unit_of_work()

    async def enter() -> None:
        await unit.__aenter__()
        await Widget.create(name="never")

    await asyncio.create_task(enter())
    with pytest.raises(UnitOfWorkError, match="entered in one task and exited in another"):
        await unit.__aexit__(None, None, None)

    assert session.registry.registry == {}
    assert await stored_names() == []
