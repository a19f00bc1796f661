"""The task-scoped session registry and the guard that keeps it honest.

A session belongs to exactly one unit of work, and a unit of work to exactly one
asyncio task. The registry is keyed by that task, but it refuses to hand out a
session to a task that has no unit of work of its own: a child task made with
``asyncio.gather`` or ``create_task`` inside a handler would otherwise get a
fresh session that nobody commits or removes, and its writes would vanish.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import TextClause, event
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_scoped_session,
    async_sessionmaker,
)
from sqlalchemy.orm import Session, SessionTransaction, UOWTransaction
from sqlalchemy.util import await_

from service.db._statements import writes

if TYPE_CHECKING:
    from service.db._unit_of_work import UnitOfWork

__all__ = [
    "RolledBackError",
    "UnitOfWorkError",
    "acquire_unless_awaited",
    "current_unit_of_work",
    "has_configured_bind",
    "join_sessions_to",
    "session",
]

Bind = AsyncEngine | AsyncConnection

logger = logging.getLogger(__name__)


class UnitOfWorkError(RuntimeError):
    """The database was used where no unit of work owns the session."""


class RolledBackError(UnitOfWorkError):
    """A unit of work could not end with success: a failure had rolled back its earlier writes.

    A statement or flush failed outside any savepoint, which rolls back the whole
    transaction, and the code caught the error and went on. Committing then would
    report as saved the writes that were made before the failure and are gone, so
    nothing is committed and this is raised instead. ``cause`` is the failure.
    """

    def __init__(self, cause: Exception) -> None:
        self.cause = cause
        super().__init__(
            f"{type(cause).__name__} rolled back this unit of work's earlier writes, and the "
            "code caught it and went on; nothing was committed. To contain a failure that the "
            "code handles, make the attempt in a savepoint: `async with unit_of_work(): ...` "
            "inside the unit of work, with the `try` around that block."
        )


# The unit of work active in this context. Context variables are copied into
# child tasks, so the owner task is checked too: a copy seen from another task
# means "child task of a unit of work", not "inside one".
_current: ContextVar[UnitOfWork | None] = ContextVar("service_db_unit_of_work", default=None)

READONLY = "service.db.readonly"
"""The key in ``session.info`` that marks a read-only unit's session (``_readonly``)."""

# Set by tests: every session joins this connection's transaction (savepoints).
_joined: _JoinedConnection | None = None

_OUTSIDE = (
    "The database session was used outside a unit of work. HTTP request handlers served by "
    "`Database` get one per request. Anywhere else (a websocket handler: one per message; a "
    "streamed response's body; a background task; a before_serving hook; a CLI command; a "
    "script, a job, a test) wrap the code in `async with unit_of_work(): ...` or decorate the "
    "coroutine with `@unit_of_work()`."
)


class Context(Protocol):
    """Where an integration (the Quart binding) tells the layer about the code running now."""

    async def bind(self) -> Bind | None:
        """The engine a unit of work begun here uses by default (the current app's), if any."""

    def describe(self) -> str | None:
        """What is running here (a websocket handler, say), for the error outside a unit."""


_contexts: list[Context] = []


def add_context(context: Context) -> None:
    """Let ``context`` choose default engines and explain errors (once per context)."""
    if context not in _contexts:
        _contexts.append(context)


async def context_bind() -> Bind | None:
    """The bind the integrations choose for a unit of work begun here, if any."""
    for context in _contexts:
        bind = await context.bind()
        if bind is not None:
            return bind
    return None


def _outside() -> str:
    for context in _contexts:
        described = context.describe()
        if described is not None:
            return f"{_OUTSIDE} Here: {described}"
    return _OUTSIDE


_NO_DATABASE = (
    "This unit of work has no database: set the DATABASE_URL environment variable (a script "
    "or job then uses an engine made from it), run it in a serving app, or pass "
    "`unit_of_work(bind=engine)`."
)
CHILD_OF_WRITER = (
    "A unit of work in a child task cannot write to SQLite while its parent's unit of work "
    "holds the write lock and waits for the child (asyncio.gather, a TaskGroup, `await "
    "task`): SQLite has one writer at a time, so neither could ever go on. Run the children "
    "before the parent writes (a POST request's unit of work takes the lock at its first "
    "query), do the work in the parent, or start work that need not be waited for with "
    "`app.add_background_task` (or a task nobody awaits): it then waits for the parent's "
    "commit."
)
_WATCH_INTERVAL = 0.02
"""Seconds between two looks, while a child waits for its parent's lock, at who waits for it."""


def awaited_by(task: asyncio.Task[Any], parent: asyncio.Task[Any]) -> bool:
    """Whether ``parent`` waits, or may wait, for ``task`` to finish.

    Read off ``task``'s done callbacks (asyncio keeps them in ``_callbacks``): the
    parent's wake-up when it awaits the task itself, its TaskGroup's, and those of
    ``gather``, ``wait`` and ``wait_for``, whichever task awaits those. A callback
    that only drops the task from a collection (the recipe for tasks nobody
    awaits: ``tasks.add(task); task.add_done_callback(tasks.discard)``) is no wait.
    """
    for callback, _ in getattr(task, "_callbacks", None) or ():
        owner = getattr(callback, "__self__", None)
        if isinstance(owner, set | list | dict):
            continue
        if owner is parent or getattr(owner, "_parent_task", parent) is parent:
            return True  # `await task`, a TaskGroup of the parent's, gather, wait, wait_for
    return False


async def acquire_unless_awaited(lock: asyncio.Lock, holder: asyncio.Task[Any]) -> None:
    """Take ``lock``, held by ``holder``, an ancestor of this task: unless it waits for us.

    A parent that waits for its child while holding the lock the child needs
    would wait forever, so that is refused with ``UnitOfWorkError`` as soon as it
    shows (at once for gather and TaskGroup, within a moment for a later
    ``await task``); a child nobody waits for queues until the parent is done.
    """
    me = asyncio.current_task()
    assert me is not None
    if awaited_by(me, holder):
        raise UnitOfWorkError(CHILD_OF_WRITER)
    acquiring = asyncio.ensure_future(lock.acquire())
    try:
        while not acquiring.done():
            await asyncio.wait({acquiring}, timeout=_WATCH_INTERVAL)
            if not acquiring.done() and awaited_by(me, holder):
                raise UnitOfWorkError(CHILD_OF_WRITER)
        acquiring.result()
    except BaseException:
        if acquiring.done() and not acquiring.cancelled() and acquiring.exception() is None:
            lock.release()
        else:
            acquiring.cancel()
        raise


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
        raise UnitOfWorkError(_outside())
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


@event.listens_for(_Session, "after_flush")
def _flushed(session: Session, flush_context: UOWTransaction) -> None:
    session.info[_WROTE] = session.get_transaction()


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
        unit = _current.get()
        if _joined is not None and (unit is None or _joined.serves(unit.bind)):
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


def same_database(one: Bind, other: Bind) -> bool:
    """Whether two binds reach the same database (engines of the same URL, say)."""
    return _engine_of(one).url == _engine_of(other).url


def _engine_of(bind: Bind) -> AsyncEngine:
    return bind if isinstance(bind, AsyncEngine) else bind.engine


def default_bind() -> Bind | None:
    """The bind units of work use without one of their own: the joined test connection, or
    the one the session factory is configured with (the first serving app's engine)."""
    if _joined is not None:
        return _joined.connection
    bind: Bind | None = session.session_factory.kw.get("bind")
    return bind


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

    def serves(self, bind: Bind | None) -> bool:
        """Whether a unit bound to ``bind`` joins: it is on the test's database, or unbound."""
        return bind is None or same_database(bind, self.connection)

    def take_turn(self, conn: Connection, name: object) -> None:
        # The "savepoint" event, in the greenlet of the session's first use of the connection.
        unit = _current.get()
        if unit is None or unit.turn is not None:
            return  # not a unit's session, or a savepoint of a unit that has its turn
        holder = next((a for a in unit.ancestors() if a.turn is not None and not a.ending), None)
        if holder is not None and self.sqlite and not holder.readonly:
            # As in production: the parent holds SQLite's write lock; the child waits for
            # its end, unless the parent waits for the child.
            await_(acquire_unless_awaited(self.lock, holder.task))
            unit.turn = self.lock
            return
        turn = self.lock if holder is None else holder.children_turn()
        await_(turn.acquire())
        if holder is not None and holder.ending:
            # The parent ended while this child waited (a task it did not wait for): the
            # connection is no longer its to share, so queue like any other unit.
            turn.release()
            turn = self.lock
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
