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
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiosqlite
from sqlalchemy.engine import Connection
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.util import await_

from service.db import _events
from service.db._context import UnitOfWorkError, acquire_unless_awaited, ancestor_tasks

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

__all__ = ["BUSY_TIMEOUT", "READ_ONLY", "begin", "connector", "invalidate"]

READ_ONLY = "service_db_read_only"
"""The execution option of a read-only unit's engine (``_engine.readonly_bind``): its
transactions begin DEFERRED, never waiting for the write lock."""

BUSY_TIMEOUT = 30.0
"""Seconds a writer waits for the write lock (the gate, then other processes) before 503."""
_RETRY_INTERVAL = 0.001

logger = logging.getLogger(__name__)


class WriterGate:
    """The FIFO queue of one process's writers to one database file, on one event loop."""

    def __init__(self, database: str = "") -> None:
        self.database = database
        self._lock = asyncio.Lock()  # FIFO: a free lock is never taken past a waiter
        self._task: asyncio.Task[Any] | None = None

    async def acquire(self) -> None:
        """Queue for the gate; refuse at once a wait that could never end."""
        task = asyncio.current_task()
        holder = self._task
        if self._lock.locked() and holder is task:
            raise UnitOfWorkError(_SAME_TASK)
        with _events.writer_waiting(self.database):  # events: the queue's length and wait
            if self._lock.locked() and holder is not None and holder in ancestor_tasks():
                # The holder is a unit of work this task's was started from: queue unless
                # it waits for this task, which would then wait for ever.
                await acquire_unless_awaited(self._lock, holder)
            else:
                await self._lock.acquire()
        self._task = task

    def release(self) -> None:
        self._task = None
        self._lock.release()


_SAME_TASK = (
    "This task already holds SQLite's write lock through another connection (its unit of "
    "work's session), so a second connection that writes would wait for it forever. Use "
    "`session` for all of the task's database work."
)

_gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, WriterGate]] = (
    weakref.WeakKeyDictionary()
)


def _gate_for(path: str) -> WriterGate:
    gates = _gates.setdefault(asyncio.get_running_loop(), {})
    gate = gates.get(path)
    if gate is None:
        gate = gates[path] = WriterGate(path)
    return gate


class GatedConnection(aiosqlite.Connection):
    """aiosqlite's connection: one hop to its thread per statement, writers through the gate.

    aiosqlite crosses to the connection's thread for every cursor call (make,
    execute, fetch, close: four hops a query) and for BEGIN. Here a statement is
    executed and its rows fetched in one hop, and the layer's BEGIN goes in the
    same hop as the transaction's first statement. A writer's gate is held from
    before its BEGIN IMMEDIATE until the transaction has ended in the connection's
    thread: a COMMIT, a ROLLBACK (the pool's reset after a failure included) or
    the connection's close.
    """

    def __init__(self, connector: Callable[[], sqlite3.Connection], gate: WriterGate) -> None:
        super().__init__(connector, iter_chunk_size=64)
        self.gate = gate
        self._holds_gate = False
        self._begin: _Begin | None = None

    async def begin(self, *, write: bool) -> None:
        """Begin a transaction with the next statement: IMMEDIATE through the gate, or DEFERRED."""
        if not write:
            self._begin = _Begin("BEGIN", 0.0)
            return
        deadline = time.monotonic() + BUSY_TIMEOUT
        try:
            async with asyncio.timeout(BUSY_TIMEOUT):
                await self.gate.acquire()
        except TimeoutError:
            raise TimeoutError(
                f"SQLite's write lock was not obtained within {BUSY_TIMEOUT:g} s"
            ) from None
        self._holds_gate = True
        # From here on the gate is released by whatever ends the transaction, after the
        # thread has run it: never while a BEGIN may still be under way there.
        self._begin = _Begin("BEGIN IMMEDIATE", deadline)

    def cursor(self) -> _Cursor:  # type: ignore[override]
        return _Cursor(self)

    async def run_statement(self, sql: str, parameters: Any, *, many: bool) -> _Outcome:
        begin, self._begin = self._begin, None
        outcome: _Outcome = await self._execute(  # type: ignore[no-untyped-call]
            _statement, self._conn, begin, sql, parameters, many
        )
        return outcome

    async def in_thread(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run ``function(*args)`` in the connection's thread (a cursor's further rows)."""
        return await self._execute(function, *args)  # type: ignore[no-untyped-call]

    async def commit(self) -> None:
        try:
            if self._begin is not None:
                self._begin = None  # no statement ran: there is no transaction to commit
            else:
                await super().commit()
        finally:
            self._release()

    async def rollback(self) -> None:
        try:
            if self._begin is not None:
                self._begin = None
            elif self._connection is not None and self._conn.in_transaction:
                await super().rollback()  # else nothing to roll back: no hop for it
        finally:
            self._release()

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            self._begin = None
            self._release()

    def _release(self) -> None:
        if self._holds_gate:
            self._holds_gate = False
            self.gate.release()


@dataclass(frozen=True, slots=True)
class _Begin:
    statement: str
    deadline: float
    """For BEGIN IMMEDIATE: when to give up waiting for other processes' writers."""


_Outcome = tuple[Any, list[Any], int, int | None, sqlite3.Cursor | None]
"""A statement's description, first rows, rowcount, lastrowid, and its cursor if rows remain."""

_BATCH = 1000
"""Rows fetched with the statement; a cursor with more keeps them for later hops."""


class _Cursor:
    """The async cursor SQLAlchemy's aiosqlite adapter drives, over ``run_statement``.

    Up to ``_BATCH`` rows come with the statement, so fetching and closing a
    typical result cost no hop. A larger result keeps its sqlite3 cursor open and
    fetches the rest as asked: all at once for a buffered result, a batch at a
    time for a server-side one (``session.stream()``, ``yield_per``), so that
    streaming a large table holds a batch in memory, not the table.
    """

    __slots__ = (
        "_connection",
        "_pending",
        "_rows",
        "arraysize",
        "description",
        "lastrowid",
        "rowcount",
    )

    def __init__(self, connection: GatedConnection) -> None:
        self._connection = connection
        self._rows: deque[Any] = deque()
        self._pending: sqlite3.Cursor | None = None
        self.description: Any = None
        self.rowcount = -1
        self.lastrowid: int | None = None
        self.arraysize = 1

    async def __aenter__(self) -> _Cursor:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def execute(self, sql: str, parameters: Any = ()) -> _Cursor:
        return self._done(await self._connection.run_statement(sql, parameters, many=False))

    async def executemany(self, sql: str, parameters: Any) -> _Cursor:
        return self._done(await self._connection.run_statement(sql, parameters, many=True))

    def _done(self, outcome: _Outcome) -> _Cursor:
        self.description, rows, self.rowcount, self.lastrowid, self._pending = outcome
        self._rows = deque(rows)
        return self

    async def _more(self, size: int | None) -> None:
        pending = self._pending
        if pending is None:
            return
        rows: list[Any] = await self._connection.in_thread(_fetch, pending, size)
        if size is None or len(rows) < size:
            self._pending = None  # exhausted, and closed in the thread
        self._rows.extend(rows)

    async def fetchone(self) -> Any:
        if not self._rows:
            await self._more(_BATCH)
        return self._rows.popleft() if self._rows else None

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        size = size or self.arraysize
        if len(self._rows) < size:
            await self._more(max(size - len(self._rows), _BATCH))
        count = min(size, len(self._rows))
        return [self._rows.popleft() for _ in range(count)]

    async def fetchall(self) -> list[Any]:
        await self._more(None)
        rows, self._rows = list(self._rows), deque()
        return rows

    async def close(self) -> None:
        self._rows.clear()
        pending, self._pending = self._pending, None
        if pending is not None and self._connection._connection is not None:
            await self._connection.in_thread(pending.close)


def _statement(
    connection: sqlite3.Connection, begin: _Begin | None, sql: str, parameters: Any, many: bool
) -> _Outcome:
    """In the connection's thread: the pending BEGIN, the statement, and its first rows."""
    if begin is not None:
        if begin.deadline:
            _begin_immediate(connection, max(begin.deadline - time.monotonic(), 0.0))
        else:
            connection.execute(begin.statement)
    cursor = connection.cursor()
    try:
        if many:
            cursor.executemany(sql, parameters)
        else:
            cursor.execute(sql, parameters)
        description = cursor.description
        rows = cursor.fetchmany(_BATCH) if description else []
        if len(rows) == _BATCH:
            kept = cursor  # more may follow: fetched as asked, closed when done
            return description, rows, cursor.rowcount, cursor.lastrowid, kept
        cursor.close()
        return description, rows, cursor.rowcount, cursor.lastrowid, None
    except BaseException:
        cursor.close()
        raise


def _fetch(cursor: sqlite3.Cursor, size: int | None) -> list[Any]:
    """In the connection's thread: ``size`` more rows (all if ``None``), closing when done."""
    rows = cursor.fetchall() if size is None else cursor.fetchmany(size)
    if size is None or len(rows) < size:
        cursor.close()
    return rows


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
    """The engine's ``begin`` event: the layer's own BEGIN, sent with the first statement.

    DEFERRED for a read-only unit's engine (``READ_ONLY``), else IMMEDIATE.
    """
    driver: GatedConnection = connection.connection.driver_connection  # type: ignore[assignment]
    await_(driver.begin(write=not connection.get_execution_options().get(READ_ONLY, False)))


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
