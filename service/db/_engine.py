"""Engines, with SQLite made fit to be the embedded default."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy import URL, event, make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from service.db._session import _current

__all__ = ["make_engine"]

SQLITE_BUSY_TIMEOUT_MS = 30_000

logger = logging.getLogger(__name__)


def make_engine(
    url: str | URL,
    *,
    connect_timeout: float | None = None,
    command_timeout: float | None = None,
    **options: Any,
) -> AsyncEngine:
    """Create an async engine for ``url``; ``options`` go to ``create_async_engine``.

    Call it when serving starts, never at import: an engine belongs to the
    event loop it was first used on. A SQLite file URL gets its directory
    created, foreign keys enforced, WAL, a busy timeout and a BEGIN of our own
    (see ``_sqlite_begin``).

    A database server is one that can go away. Its pooled connections are
    checked before use (``pool_pre_ping``), so one the server dropped is
    replaced instead of failing a request; and with asyncpg, ``connect_timeout``
    and ``command_timeout`` (seconds) bound how long a connection attempt and a
    statement may take, so that a database that does not answer fails the
    request instead of hanging it. SQLite has neither: it waits for its write
    lock by its busy timeout.
    """
    url = make_url(url)
    if url.get_backend_name() != "sqlite":
        options.setdefault("pool_pre_ping", True)
        if url.get_driver_name() == "asyncpg":
            timeouts = {"timeout": connect_timeout, "command_timeout": command_timeout}
            connect_args = {name: value for name, value in timeouts.items() if value is not None}
            options["connect_args"] = {**connect_args, **options.get("connect_args", {})}
        return create_async_engine(url, **options)
    if not url.database or url.database == ":memory:" or url.database.startswith("file:"):
        raise ValueError(
            f"{url!r}: use a SQLite file such as sqlite+aiosqlite:///var/service.db. An in-memory "
            "database is one shared connection, where one task's rollback discards another's work."
        )
    Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url, **options)
    event.listen(engine.sync_engine, "connect", _sqlite_connect)
    event.listen(engine.sync_engine, "begin", _sqlite_begin)
    event.listen(engine.sync_engine, "invalidate", _sqlite_invalidate)
    return engine


def _sqlite_connect(connection: DBAPIConnection, record: ConnectionPoolEntry) -> None:
    # Stop the driver from emitting BEGIN (lazily, and COMMIT before DDL); we
    # emit it ourselves, which also makes SAVEPOINT work.
    connection.isolation_level = None
    cursor = connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")  # first: WAL may wait
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.close()


def _sqlite_invalidate(
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


def _sqlite_begin(connection: Any) -> None:
    # A DEFERRED transaction that reads and then writes fails at once with
    # "database is locked" when another writer got there first: the busy
    # timeout does not apply to that upgrade. So a unit of work that may write
    # takes the write lock at BEGIN (waiting up to the busy timeout for it);
    # one marked read-only begins DEFERRED and never blocks other readers (WAL).
    unit = _current.get()
    connection.exec_driver_sql("BEGIN" if unit is not None and unit.readonly else "BEGIN IMMEDIATE")
