"""SQLite made fit to be the embedded default: its connections, its BEGIN, its write queue.

SQLite has one writer at a time. A unit of work that may write takes the write
lock at BEGIN IMMEDIATE (a DEFERRED transaction that reads and then writes fails
at once with "database is locked" when another writer got there first: the busy
timeout does not apply to that upgrade). Left to themselves, a process's writers
would all wait in SQLite's busy handler, which polls with growing sleeps and
serves no one in order, so that the oldest waiters starve. Instead each process
queues its writers at a FIFO gate in front of BEGIN IMMEDIATE: at most one
connection of the process waits for the lock, writers get it in arrival order,
and readers never wait at the gate. The one at the front waits for other
processes' writers by retrying every millisecond (as Rails 8 does) until the
busy timeout, rather than by SQLite's backoff.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sqlite3
import time
import weakref
from typing import TYPE_CHECKING, Any

import aiosqlite
from sqlalchemy.engine import Connection
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.util import await_

from service.db._session import UnitOfWorkError, _current

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from service.db._unit_of_work import UnitOfWork

__all__ = ["BUSY_TIMEOUT", "begin", "connector", "invalidate"]

BUSY_TIMEOUT = 30.0
"""Seconds a writer waits for the write lock (the gate, then other processes) before 503."""
_RETRY_INTERVAL = 0.001

logger = logging.getLogger(__name__)


class WriterGate:
    """The FIFO queue of one process's writers to one database file, on one event loop."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()  # FIFO: a free lock is never taken past a waiter
        self._task: asyncio.Task[Any] | None = None
        self._unit: UnitOfWork | None = None

    async def acquire(self, unit: UnitOfWork | None) -> None:
        """Queue for the gate; refuse at once a wait that could never end."""
        task = asyncio.current_task()
        if self._lock.locked():
            if self._task is not None and self._task is task:
                raise UnitOfWorkError(_SAME_TASK)
            if self._unit is not None and unit is not None and self._unit in unit.ancestors():
                raise UnitOfWorkError(_CHILD_OF_WRITER)
        await self._lock.acquire()
        self._task, self._unit = task, unit

    def release(self) -> None:
        self._task = self._unit = None
        self._lock.release()


_SAME_TASK = (
    "This task already holds SQLite's write lock through another connection (its unit of "
    "work's session), so a second connection that writes would wait for it forever. Use "
    "`session` for all of the task's database work."
)
_CHILD_OF_WRITER = (
    "A unit of work in a child task cannot write to SQLite while its parent's unit of work "
    "holds the write lock: SQLite has one writer at a time, and the parent waits for the "
    "child. Run the children before the parent uses the database (a POST request's unit of "
    "work takes the lock at its first query), do the work in the parent, or use PostgreSQL."
)

_gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, WriterGate]] = (
    weakref.WeakKeyDictionary()
)


def _gate_for(path: str) -> WriterGate:
    gates = _gates.setdefault(asyncio.get_running_loop(), {})
    gate = gates.get(path)
    if gate is None:
        gate = gates[path] = WriterGate()
    return gate


class GatedConnection(aiosqlite.Connection):
    """aiosqlite's connection, whose write transactions pass the gate of its database.

    The gate is held from before BEGIN IMMEDIATE until the transaction has ended
    in the connection's thread: a COMMIT, a ROLLBACK (the pool's reset after a
    failure included) or the connection's close.
    """

    def __init__(self, connector: Callable[[], sqlite3.Connection], gate: WriterGate) -> None:
        super().__init__(connector, iter_chunk_size=64)
        self.gate = gate
        self._holds_gate = False

    async def begin(self, *, write: bool, unit: UnitOfWork | None) -> None:
        if not write:
            await self._run(self._conn.execute, "BEGIN")
            return
        started = time.monotonic()
        try:
            async with asyncio.timeout(BUSY_TIMEOUT):
                await self.gate.acquire(unit)
        except TimeoutError:
            raise TimeoutError(
                f"SQLite's write lock was not obtained within {BUSY_TIMEOUT:g} s"
            ) from None
        self._holds_gate = True
        # From here on the gate is released by whatever ends the transaction, after the
        # thread has run it: never while a BEGIN may still be under way there.
        remaining = max(BUSY_TIMEOUT - (time.monotonic() - started), 0.0)
        await self._run(_begin_immediate, self._conn, remaining)

    async def _run(self, function: Callable[..., object], *args: object) -> None:
        """Run ``function(*args)`` in the connection's thread (aiosqlite's queue)."""
        await self._execute(function, *args)  # type: ignore[no-untyped-call]

    async def commit(self) -> None:
        try:
            await super().commit()
        finally:
            self._release()

    async def rollback(self) -> None:
        try:
            await super().rollback()
        finally:
            self._release()

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            self._release()

    def _release(self) -> None:
        if self._holds_gate:
            self._holds_gate = False
            self.gate.release()


def _begin_immediate(connection: sqlite3.Connection, timeout: float) -> None:
    """BEGIN IMMEDIATE, retried every millisecond while another process holds the lock."""
    deadline = time.monotonic() + timeout
    connection.execute("PRAGMA busy_timeout = 0")
    try:
        while True:
            try:
                connection.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as error:
                busy = error.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
                if not busy or time.monotonic() >= deadline:
                    raise
            time.sleep(_RETRY_INTERVAL)
    finally:
        connection.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")


def _open(path: str) -> sqlite3.Connection:
    # In the connection's thread, in one hop: the driver must not emit BEGIN itself
    # (lazily, and a COMMIT before DDL); the layer does, which also makes SAVEPOINT work.
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")  # first: WAL may wait
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA foreign_keys = ON")
    return connection


def connector(database: str) -> Callable[[], Coroutine[Any, Any, GatedConnection]]:
    """The ``async_creator`` of an engine on the SQLite file ``database``."""
    path = os.path.realpath(database)

    async def connect() -> GatedConnection:
        connection = GatedConnection(functools.partial(_open, path), _gate_for(path))
        # As SQLAlchemy does for aiosqlite: a connection never closed must not keep the
        # interpreter from exiting.
        connection._thread.daemon = True
        await connection
        return connection

    return connect


def begin(connection: Connection) -> None:
    """The engine's ``begin`` event: the layer's own BEGIN, through the gate for a writer."""
    unit = _current.get()
    driver: GatedConnection = connection.connection.driver_connection  # type: ignore[assignment]
    await_(driver.begin(write=unit is None or not unit.readonly, unit=unit))


def invalidate(
    connection: DBAPIConnection, record: ConnectionPoolEntry, exception: BaseException | None
) -> None:
    # A connection is invalidated when its unit of work is cancelled in the middle of a
    # statement (a client that went away mid-request). Closed with that statement unfinished,
    # the sqlite3 connection becomes a zombie that keeps its transaction - and the database's
    # write lock - until the garbage collector finalizes the statement: meanwhile every writer
    # waits out its busy timeout, then fails. Rolling back first releases the lock at once.
    try:
        connection.rollback()
    except Exception:
        logger.warning("rolling back an invalidated SQLite connection failed", exc_info=True)
