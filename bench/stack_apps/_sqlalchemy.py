"""The engine the hand-written and FastAPI stacks make, as SQLAlchemy's docs teach it.

PostgreSQL (asyncpg): ``create_async_engine`` with a pool of ``POOL_SIZE``.

SQLite (aiosqlite): the recipe of SQLAlchemy's SQLite dialect docs ("Serializable
isolation / Savepoints / Transactional DDL"): the driver's own BEGIN is turned
off and the ``begin`` event sends SQLAlchemy's; here ``BEGIN IMMEDIATE`` when
the connection carries the execution option ``sqlite_immediate`` (a write),
``BEGIN`` otherwise (a read). Each connection is set up as the layer's are: WAL,
``synchronous=FULL``, the busy timeout, foreign keys. Writers wait for the lock
in SQLite's own busy handler: the layer's FIFO gate is the layer's, not theirs.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event, make_url
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bench.stack_apps import BUSY_TIMEOUT_MS, POOL_SIZE

__all__ = ["IMMEDIATE", "make_engine"]

IMMEDIATE = {"sqlite_immediate": True}
"""Execution options of a write: on SQLite its transaction begins IMMEDIATE."""


def _connect(dbapi_connection: Any, record: Any) -> None:
    dbapi_connection.isolation_level = None  # no BEGIN of the driver's own
    cursor = dbapi_connection.cursor()
    for pragma in (
        f"busy_timeout = {BUSY_TIMEOUT_MS}",
        "journal_mode = WAL",
        "synchronous = FULL",
        "foreign_keys = ON",
    ):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def _begin(connection: Connection) -> None:
    immediate = connection.get_execution_options().get("sqlite_immediate")
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def make_engine(url: str) -> AsyncEngine:
    if make_url(url).get_backend_name() != "sqlite":
        return create_async_engine(url, pool_size=POOL_SIZE, max_overflow=0)
    engine = create_async_engine(url, pool_size=POOL_SIZE, max_overflow=0)
    event.listen(engine.sync_engine, "connect", _connect)
    event.listen(engine.sync_engine, "begin", _begin)
    return engine
