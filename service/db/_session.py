"""The session registry, keyed by unit of work, and the guard that keeps it honest.

A session belongs to exactly one unit of work, and a unit of work to exactly one
asyncio task. The registry refuses to hand out a session to a task that has no
unit of work of its own: a child task made with ``asyncio.gather`` or
``create_task`` inside a handler would otherwise get a fresh session that nobody
commits or removes, and its writes would vanish. Its sessions contain their
failures (``_Session``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from sqlalchemy import TextClause, event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_scoped_session,
    async_sessionmaker,
)
from sqlalchemy.orm import Session, SessionTransaction, UOWTransaction

from service.db._context import Bind, UnitOfWorkError, current, outside_message
from service.db._statements import writes

__all__ = [
    "READONLY",
    "Joining",
    "default_bind",
    "failure_in",
    "has_configured_bind",
    "listen",
    "lost_writes",
    "same_database",
    "session",
    "set_joining",
]

logger = logging.getLogger(__name__)

READONLY = "service.db.readonly"
"""The key in ``session.info`` that marks a read-only unit's session (``_readonly``)."""

_NO_DATABASE = (
    "This unit of work has no database: set the DATABASE_URL environment variable (a script "
    "or job then uses an engine made from it), run it in a serving app, or pass "
    "`unit_of_work(bind=engine)`."
)


class Joining(Protocol):
    """The connection every session joins in tests (``service.db.testing``), if one is set."""

    connection: AsyncConnection

    def serves(self, bind: Bind | None) -> bool:
        """Whether a unit bound to ``bind`` joins it (it is on the test's database)."""


_joining: Joining | None = None


def set_joining(joining: Joining | None) -> Joining | None:
    """Make every session join ``joining``'s connection (``None``: stop); the previous one."""
    global _joining
    previous, _joining = _joining, joining
    return previous


_CHILD_TASK = (
    "The database session was used from a child task (asyncio.gather, create_task, TaskGroup) "
    "of a unit of work. The session belongs to the task that opened the unit of work, and a "
    "child task would get a session that nobody commits or removes. Do the database work in "
    "the parent task, or decorate the child coroutine with `@unit_of_work()` so that it "
    "commits its own transaction."
)


def _scope() -> object:
    unit = current.get()
    if unit is None:
        raise UnitOfWorkError(outside_message())
    if unit.task is not asyncio.current_task():
        raise UnitOfWorkError(_CHILD_TASK)
    return unit  # a unit of work on another database, nested in the task's, has its own


_WROTE = "service.db.wrote_in"
"""``session.info``: the root transaction in which the session last wrote."""
_LOST = "service.db.lost"
"""``session.info``: the failure that rolled back writes of the unit of work, if any."""
_FAILED = "service.db.failed"
"""``session.info``: ``[(savepoint, error)]``, failures inside savepoints not yet ended."""
_HANDLED = "service.db.handled"


class _Session(Session):
    """The sync session behind every ``AsyncSession`` of the registry.

    A subclass of its own so that the layer's bookkeeping (on-commit callbacks,
    failures) listens to this layer's sessions only, never to sessions other
    code makes. A statement or flush that fails is contained here, the same way
    on every database: inside a savepoint it leaves that savepoint to be rolled
    back when its block ends; outside any, it rolls back the whole transaction,
    and if that undid earlier writes the unit of work can no longer commit.
    """

    def flush(self, objects: Any = None) -> None:
        try:
            super().flush(objects)
        except Exception as error:
            # SQLAlchemy has rolled back the innermost savepoint, or the transaction,
            # unless the flush failed before it began (a before_flush listener).
            innermost = self.get_nested_transaction() or self.get_transaction()
            if innermost is not None and not innermost.is_active:
                _failed(self, error)
            raise

    # The three public ways into Session._execute_internal (get() goes through execute).
    def execute(self, *args: Any, **kwargs: Any) -> Any:
        try:
            result = super().execute(*args, **kwargs)
        except DBAPIError as error:
            _failed(self, error)
            raise
        _note_write(self, args[0] if args else kwargs.get("statement"))
        return result

    def scalars(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().scalars(*args, **kwargs)
        except DBAPIError as error:
            _failed(self, error)
            raise

    def scalar(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().scalar(*args, **kwargs)
        except DBAPIError as error:
            _failed(self, error)
            raise


def _note_write(session: Session, statement: object) -> None:
    if getattr(statement, "is_dml", False) or (
        isinstance(statement, TextClause) and writes(statement.text)
    ):
        session.info[_WROTE] = session.get_transaction()


def _flushed(session: Session, flush_context: UOWTransaction) -> None:
    session.info[_WROTE] = session.get_transaction()


def listen() -> None:
    """Install this module's session listener (``_listeners.install``)."""
    event.listen(_Session, "after_flush", _flushed)


def _failed(session: Session, error: Exception) -> None:
    """Contain a failed statement or flush: see ``_Session``. Once per error."""
    if session.info.get(_HANDLED) is error:
        return  # an autoflush's failure, seen by flush() and again by execute()
    session.info[_HANDLED] = error
    savepoint = session.get_nested_transaction()
    if savepoint is not None:
        # Its block rolls it back when it ends; on PostgreSQL nothing more runs in it before.
        session.info.setdefault(_FAILED, []).append((savepoint, error))
        return
    root = session.get_transaction()
    wrote = root is not None and session.info.get(_WROTE) is root
    try:
        # The same on every database: PostgreSQL has aborted the transaction, SQLite only the
        # statement, and a failed flush has already rolled it back.
        session.rollback()
    except Exception:
        logger.warning("rolling back after a failed statement failed", exc_info=True)
    if wrote and _LOST not in session.info:
        session.info[_LOST] = error


def lost_writes(session: AsyncSession) -> Exception | None:
    """The failure that rolled back writes of ``session``'s unit of work, or ``None``."""
    lost: Exception | None = session.info.get(_LOST)
    return lost


def failure_in(session: AsyncSession, savepoint: SessionTransaction) -> BaseException | None:
    """Forget, and return, the first failure inside ``savepoint`` (or a savepoint within it)."""
    failures: list[tuple[SessionTransaction, BaseException]] = session.info.get(_FAILED, [])
    found = [item for item in failures if _within(item[0], savepoint)]
    if not found:
        return None
    failures[:] = [item for item in failures if item not in found]
    return found[0][1]


def _within(transaction: SessionTransaction | None, ancestor: SessionTransaction) -> bool:
    while transaction is not None:
        if transaction is ancestor:
            return True
        transaction = transaction.parent
    return False


class _SessionMaker(async_sessionmaker[AsyncSession]):
    """Makes the current unit of work's session, bound to the unit's own engine.

    Each app's requests carry their app's engine, so two apps in one process
    never write to each other's database. A unit without one uses the bind the
    factory is configured with (the first app to start serving).
    """

    def __call__(self, **local_kw: Any) -> AsyncSession:
        unit = current.get()
        if _joining is not None and (unit is None or _joining.serves(unit.bind)):
            local_kw.setdefault("bind", _joining.connection)
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


def same_database(one: Bind, other: Bind) -> bool:
    """Whether two binds reach the same database (engines of the same URL, say)."""
    return _engine_of(one).url == _engine_of(other).url


def _engine_of(bind: Bind) -> AsyncEngine:
    return bind if isinstance(bind, AsyncEngine) else bind.engine


def default_bind() -> Bind | None:
    """The bind units of work use without one of their own: the joined test connection, or
    the one the session factory is configured with (the first serving app's engine)."""
    if _joining is not None:
        return _joining.connection
    bind: Bind | None = session.session_factory.kw.get("bind")
    return bind


def has_configured_bind() -> bool:
    """Whether sessions have a bind without a unit's own: a serving app's, or a test's."""
    return _joining is not None or session.session_factory.kw.get("bind") is not None
