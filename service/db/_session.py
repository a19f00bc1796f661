"""The task-scoped session registry and the guard that keeps it honest.

A session belongs to exactly one unit of work, and a unit of work to exactly one
asyncio task. The registry is keyed by that task, but it refuses to hand out a
session to a task that has no unit of work of its own: a child task made with
``asyncio.gather`` or ``create_task`` inside a handler would otherwise get a
fresh session that nobody commits or removes, and its writes would vanish.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_scoped_session,
    async_sessionmaker,
)
from sqlalchemy.orm import Session
from sqlalchemy.util import await_

if TYPE_CHECKING:
    from service.db._unit_of_work import UnitOfWork

__all__ = [
    "UnitOfWorkError",
    "current_unit_of_work",
    "has_configured_bind",
    "join_sessions_to",
    "session",
]

Bind = AsyncEngine | AsyncConnection


class UnitOfWorkError(RuntimeError):
    """The database was used where no unit of work owns the session."""


# The unit of work active in this context. Context variables are copied into
# child tasks, so the owner task is checked too: a copy seen from another task
# means "child task of a unit of work", not "inside one".
_current: ContextVar[UnitOfWork | None] = ContextVar("service_db_unit_of_work", default=None)

READONLY = "service.db.readonly"
"""The key in ``session.info`` that marks a read-only unit's session (``_readonly``)."""

# Set by tests: every session joins this connection's transaction (savepoints).
_joined: _JoinedConnection | None = None

_OUTSIDE = (
    "The database session was used outside a unit of work. Handlers served by `Database` "
    "get one per HTTP request; anywhere else (scripts, jobs, tests) wrap the code in "
    "`async with unit_of_work(): ...` or decorate the coroutine with `@unit_of_work()`."
)
_NO_DATABASE = (
    "This unit of work has no database: set the DATABASE_URL environment variable (a script "
    "or job then uses an engine made from it), run it in a serving app, or pass "
    "`unit_of_work(bind=engine)`."
)
_CHILD_OF_WRITER_JOINED = (
    "A unit of work in a child task cannot write to SQLite while its parent's unit of work "
    "holds the write lock: SQLite has one writer at a time, and the parent waits for the "
    "child (the test's shared transaction reports what production would do). Run the "
    "children before the parent uses the database, do the work in the parent, or use "
    "PostgreSQL."
)
_CHILD_TASK = (
    "The database session was used from a child task (asyncio.gather, create_task, TaskGroup) "
    "of a unit of work. The session belongs to the task that opened the unit of work, and a "
    "child task would get a session that nobody commits or removes. Do the database work in "
    "the parent task, or decorate the child coroutine with `@unit_of_work()` so that it "
    "commits its own transaction."
)


def current_unit_of_work() -> UnitOfWork | None:
    """The unit of work that owns the current task, or ``None``."""
    unit = _current.get()
    if unit is None or unit.task is not asyncio.current_task():
        return None
    return unit


def _scope() -> object:
    unit = _current.get()
    if unit is None:
        raise UnitOfWorkError(_OUTSIDE)
    task = asyncio.current_task()
    if unit.task is not task:
        raise UnitOfWorkError(_CHILD_TASK)
    return task


class _Session(Session):
    """The sync session behind every ``AsyncSession`` of the registry.

    A subclass of its own so that the on-commit bookkeeping listens to this
    layer's sessions only, never to sessions other code makes.
    """


class _SessionMaker(async_sessionmaker[AsyncSession]):
    """Makes the current unit of work's session, bound to the unit's own engine.

    Each app's requests carry their app's engine, so two apps in one process
    never write to each other's database. A unit without one uses the bind the
    factory is configured with (the first app to start serving).
    """

    def __call__(self, **local_kw: Any) -> AsyncSession:
        unit = _current.get()
        if _joined is not None:
            local_kw.setdefault("bind", _joined.connection)
            local_kw.setdefault("join_transaction_mode", "create_savepoint")
        elif unit is not None and unit.bind is not None:
            local_kw.setdefault("bind", unit.bind)
        elif self.kw.get("bind") is None and "bind" not in local_kw:
            raise UnitOfWorkError(_NO_DATABASE)
        made = super().__call__(**local_kw)
        if unit is not None:
            unit.session = made
            if unit.readonly:
                made.info[READONLY] = True
        return made


session: async_scoped_session[AsyncSession] = async_scoped_session(
    _SessionMaker(expire_on_commit=False, sync_session_class=_Session),
    scopefunc=_scope,
)
"""The current unit of work's ``AsyncSession``, created on first use.

Full SQLAlchemy is available through it: ``await session.execute(select(...))``.
"""


def has_configured_bind() -> bool:
    """Whether sessions have a bind without a unit's own: a serving app's, or a test's."""
    return _joined is not None or session.session_factory.kw.get("bind") is not None


class _JoinedConnection:
    """The one connection every session joins in tests, shared one unit of work at a time.

    Units of work that would each have a connection of their own share this one, and
    their savepoints must nest, never interleave. So a unit takes the connection when
    its session first uses it and keeps it until it ends; a unit in a child task of
    one that has it (``asyncio.gather`` of ``@unit_of_work()`` coroutines) queues
    behind its siblings for the parent's turn instead, since the parent waits for
    them. On SQLite, as in production, a child cannot write while its parent writes.
    """

    def __init__(self, connection: AsyncConnection) -> None:
        self.connection = connection
        self.lock = asyncio.Lock()
        self.sqlite = connection.dialect.name == "sqlite"

    def take_turn(self, conn: Connection, name: object) -> None:
        # The "savepoint" event, in the greenlet of the session's first use of the connection.
        unit = _current.get()
        if unit is None or unit.turn is not None:
            return  # not a unit's session, or a savepoint of a unit that has its turn
        holder = next((a for a in unit.ancestors() if a.turn is not None), None)
        if holder is not None and self.sqlite and not holder.readonly:
            raise UnitOfWorkError(_CHILD_OF_WRITER_JOINED)
        turn = self.lock if holder is None else holder.children_turn()
        await_(turn.acquire())
        unit.turn = turn


@contextmanager
def join_sessions_to(connection: AsyncConnection) -> Iterator[None]:
    """Make every session join ``connection``'s transaction, through savepoints (for tests).

    Code under test then commits and rolls back as usual, while the caller rolls
    back the outer transaction at the end, leaving nothing behind. Units of work
    take turns on the connection (see ``_JoinedConnection``).
    """
    global _joined
    joined = _JoinedConnection(connection)
    event.listen(connection.sync_connection, "savepoint", joined.take_turn)
    previous, _joined = _joined, joined
    try:
        yield
    finally:
        _joined = previous
        event.remove(connection.sync_connection, "savepoint", joined.take_turn)
