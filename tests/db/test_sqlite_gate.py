"""SQLite's writers queue fairly within a process, at a FIFO gate before BEGIN IMMEDIATE.

At most one connection of the process waits for the write lock; writers get it in
arrival order; a reader never waits at the gate; a writer waiting at the gate can
be cancelled cleanly; and a wait that could never end fails at once.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db import UnitOfWorkError, make_engine, unit_of_work
from service.db import _sqlite as gate_module
from tests.db.conftest import ReadNames
from tests.db.models import Widget

pytestmark = pytest.mark.service_committing  # several real connections to one file


@pytest.fixture
async def engine(service_database_url: str) -> AsyncIterator[AsyncEngine]:
    if not service_database_url.startswith("sqlite"):
        pytest.skip("SQLite's write lock (the PostgreSQL run has row locks instead)")
    engine = make_engine(service_database_url)
    yield engine
    await engine.dispose()


def _path(engine: AsyncEngine) -> str:
    database = make_url(engine.url).database
    assert database is not None
    return database


async def _write(engine: AsyncEngine, name: str, order: list[str]) -> None:
    async with unit_of_work(bind=engine):
        await Widget.create(name=name)
        order.append(name)


async def _hold_the_lock(engine: AsyncEngine, release: asyncio.Event) -> asyncio.Task[None]:
    """A unit of work that has written (so holds the lock) until ``release`` is set."""
    holding = asyncio.Event()

    async def hold() -> None:
        async with unit_of_work(bind=engine):
            await Widget.create(name="holder")
            holding.set()
            await release.wait()

    task = asyncio.create_task(hold())
    await asyncio.wait_for(holding.wait(), 5)
    return task


async def test_writers_get_the_lock_in_arrival_order(
    engine: AsyncEngine, stored_names: ReadNames
) -> None:
    release, order = asyncio.Event(), list[str]()
    holder = await _hold_the_lock(engine, release)
    writers = []
    for number in range(8):
        writers.append(asyncio.create_task(_write(engine, f"w{number}", order)))
        await asyncio.sleep(0.02)  # each one at the gate before the next arrives
    release.set()
    await asyncio.gather(holder, *writers)

    assert order == [f"w{number}" for number in range(8)]


def _gate_locked(engine: AsyncEngine) -> bool:
    gate = gate_module._gate_for(os.path.realpath(_path(engine)))
    return gate._lock.locked()


@pytest.fixture
def in_busy_wait(monkeypatch: pytest.MonkeyPatch) -> Callable[[], int]:
    """The most connections of this process that were ever waiting for the lock at once."""
    lock, current, most = threading.Lock(), [0], [0]
    begin = gate_module._begin_immediate

    def counted(connection: sqlite3.Connection, timeout: float) -> None:
        with lock:
            current[0] += 1
            most[0] = max(most[0], current[0])
        try:
            begin(connection, timeout)
        finally:
            with lock:
                current[0] -= 1

    monkeypatch.setattr(gate_module, "_begin_immediate", counted)
    return lambda: most[0]


async def test_at_most_one_connection_waits_for_another_processes_lock(
    engine: AsyncEngine, in_busy_wait: Callable[[], int], stored_names: ReadNames
) -> None:
    # Another process's writer, as far as this one can tell: a plain sqlite3 connection.
    other = sqlite3.connect(_path(engine), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    order: list[str] = []
    try:
        writers = [asyncio.create_task(_write(engine, f"w{n}", order)) for n in range(8)]
        await asyncio.sleep(0.5)
        assert order == []  # all of them still waiting for the other's lock
    finally:
        other.execute("ROLLBACK")
        other.close()
    await asyncio.gather(*writers)

    assert in_busy_wait() == 1
    assert len(await stored_names()) == 8


async def test_a_reader_never_waits_at_the_gate(engine: AsyncEngine) -> None:
    release = asyncio.Event()
    holder = await _hold_the_lock(engine, release)
    waiting_writer = asyncio.create_task(_write(engine, "queued", []))
    await asyncio.sleep(0.05)

    async def read() -> int:
        async with unit_of_work(bind=engine, readonly=True):
            return await Widget.query.count()

    try:
        seen = await asyncio.wait_for(read(), 5)  # would wait for ever behind the gate
    finally:
        release.set()
    await asyncio.gather(holder, waiting_writer)

    assert seen == 0  # the holder's row is not committed yet


async def test_a_writer_cancelled_at_the_gate_leaves_nothing_behind(
    engine: AsyncEngine, stored_names: ReadNames
) -> None:
    release = asyncio.Event()
    holder = await _hold_the_lock(engine, release)
    cancelled = asyncio.create_task(_write(engine, "gone", []))
    after = asyncio.create_task(_write(engine, "after", []))
    await asyncio.sleep(0.05)

    cancelled.cancel()  # its client went away
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    release.set()
    await asyncio.wait_for(asyncio.gather(holder, after), 5)

    assert await stored_names() == ["after", "holder"]
    assert engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert not _gate_locked(engine)


async def test_a_second_writing_connection_in_the_same_task_fails_at_once(
    engine: AsyncEngine, stored_names: ReadNames
) -> None:
    async def write_twice() -> Any:
        async with unit_of_work(bind=engine):
            await Widget.create(name="first")
            async with engine.connect() as second:  # waits for the first's lock: for ever
                await second.execute(text("INSERT INTO test_widgets (name, size) VALUES ('x', 0)"))

    with pytest.raises(UnitOfWorkError, match="already holds SQLite's write lock"):
        await asyncio.wait_for(write_twice(), 5)
    assert await stored_names() == []
