"""Tools for testing code built on the layer, whatever the test runner.

- ``rolled_back(engine)``: a transaction that every session joins through
  savepoints, rolled back at the end: code under test commits, rolls back and
  nests as usual, and leaves nothing behind (``join_sessions_to`` underneath).
- ``count_queries()`` and ``assert_max_queries(n)``: the SQL run inside a block,
  and an assertion that prints it when there is too much (N+1 queries).
- ``capture_on_commit()``: the callbacks of units of work that commit inside a
  block, held for the test to inspect and run, or run as usual and recorded.
- ``running_coroutines_with(runner)``: CLI commands (``service.db.cli``) run their
  coroutines with ``runner``, such as one onto the test's event loop.
- ``test_database(url)``: a database of the tests' own next to ``url``'s, made
  empty and dropped at the end; nothing is done to ``url``'s own database.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import event, make_url, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.db import _callbacks
from service.db._callbacks import CapturedCallbacks
from service.db._cli import running_coroutines_with
from service.db._engine import make_engine
from service.db._joined import join_sessions_to

__all__ = [
    "CapturedCallbacks",
    "ExecutedQuery",
    "QueryLog",
    "assert_max_queries",
    "capture_on_commit",
    "count_queries",
    "join_sessions_to",
    "rolled_back",
    "running_coroutines_with",
    "test_database",
]

# Transaction control is not a query: a test's savepoints would count where
# production has none, and SQLite's BEGIN is the layer's doing, not the code's.
_TRANSACTION_CONTROL = re.compile(r"\s*(BEGIN|COMMIT|ROLLBACK|SAVEPOINT|RELEASE)\b", re.IGNORECASE)


@asynccontextmanager
async def rolled_back(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """An outer transaction that every session joins, rolled back at the end of the block.

    Yields its connection, through which the test reads what the code wrote.
    Setup and teardown may run in different tasks (as pytest fixtures' do).
    """
    async with engine.connect() as outer:
        transaction = await outer.begin()
        try:
            with join_sessions_to(outer):
                yield outer
        finally:
            await transaction.rollback()


@dataclass(frozen=True)
class ExecutedQuery:
    statement: str
    parameters: Any
    many: bool


class QueryLog(list[ExecutedQuery]):
    """The queries a block ran, in order; ``str()`` numbers them with their parameters."""

    def __str__(self) -> str:
        lines = []
        for number, query in enumerate(self, 1):
            many = " (executemany)" if query.many else ""
            lines.append(
                f"{number}. {query.statement.strip()}\n   parameters{many}: {query.parameters}"
            )
        return "\n".join(lines)


@contextmanager
def count_queries() -> Iterator[QueryLog]:
    """Record every query any engine of the process runs inside the block.

    Statements are counted as sent to the driver: an executemany is one query,
    and transaction control (BEGIN, COMMIT, savepoints) is left out.
    """
    log = QueryLog()

    def record(
        connection: Connection,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> None:
        if not _TRANSACTION_CONTROL.match(statement):
            log.append(ExecutedQuery(statement, parameters, executemany))

    event.listen(Engine, "before_cursor_execute", record)
    try:
        yield log
    finally:
        event.remove(Engine, "before_cursor_execute", record)


@contextmanager
def assert_max_queries(limit: int) -> Iterator[QueryLog]:
    """Fail if the block runs more than ``limit`` queries, listing the SQL it ran."""
    with count_queries() as log:
        yield log
    if len(log) > limit:
        raise AssertionError(f"{len(log)} queries ran where at most {limit} were expected:\n{log}")


@contextmanager
def capture_on_commit(*, execute: bool = False) -> Iterator[CapturedCallbacks]:
    """Capture the on-commit callbacks of the units of work that commit inside the block.

    With ``execute=False`` they are held instead of run: the test inspects them
    and may ``await captured.run()``. With ``execute=True`` they run as usual
    and are recorded too. Callbacks of a unit that rolls back never appear.
    """
    captured = CapturedCallbacks(execute=execute)
    with _callbacks.capturing(captured):
        yield captured


@asynccontextmanager
async def test_database(url: str, *, prefix: str = "test_") -> AsyncIterator[str]:
    """A database of the tests' own, empty, dropped at the end; yields its URL.

    On a database server, ``<prefix><name>`` next to ``url``'s database (made
    anew if a run that crashed left it behind), as pytest-django makes
    ``test_<NAME>``; for SQLite, a file in a temporary directory. The database
    ``url`` names is never touched: migrations and DDL run on the tests' own.

    A database another run is connected to is never dropped: two runs at once
    against one server get ``<prefix><name>`` and ``<prefix><name>_2`` (and so on).
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        with tempfile.TemporaryDirectory(prefix="service-db-test-") as directory:
            path = Path(directory, f"{prefix}{Path(parsed.database or 'db').stem}.db")
            yield parsed.set(database=str(path)).render_as_string(hide_password=False)
        return
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(f"test databases are made on SQLite and PostgreSQL, not {parsed!r}")
    # make_engine: fit for PgBouncer when DATABASE_PGBOUNCER says the server is behind one.
    admin = make_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as connection:
            name = await _made_anew(connection, f"{prefix}{parsed.database}")
        try:
            yield parsed.set(database=name).render_as_string(hide_password=False)
        finally:
            async with admin.connect() as connection:
                await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await admin.dispose()


test_database.__test__ = False  # type: ignore[attr-defined]  # not a test, for pytest


_IN_USE_OR_TAKEN = frozenset({"55006", "42P04"})  # object_in_use, duplicate_database
_CANDIDATES = 20


async def _made_anew(connection: AsyncConnection, base: str) -> str:
    """Create the first of ``base``, ``base_2``, ... that no other run is connected to.

    One left behind by a crashed run is dropped first; one in use is not (a DROP without
    FORCE refuses it), nor one another run creates at the same moment.
    """
    for number in range(1, _CANDIDATES + 1):
        name = base if number == 1 else f"{base}_{number}"
        try:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
            await connection.execute(text(f'CREATE DATABASE "{name}"'))
        except DBAPIError as error:
            if _sqlstate(error) not in _IN_USE_OR_TAKEN:
                raise
            continue
        return name
    raise RuntimeError(f"{base} and its {_CANDIDATES - 1} alternatives are all in use")


def _sqlstate(error: DBAPIError) -> str | None:
    code = getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None)
    return code if isinstance(code, str) else None
