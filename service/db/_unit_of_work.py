"""The unit of work: one task, one session, one transaction, committed only on success.

``UnitOfWork`` is the primitive every integration drives (the Quart request
hooks, and ``unit_of_work()`` for everything else): ``begin()``, then
``end(commit=...)``, always.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextvars import Token
from types import TracebackType
from typing import Any, ParamSpec, Self, TypeVar

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, AsyncSessionTransaction

from service.db import _callbacks, _events
from service.db._causal import route
from service.db._engine import default_engine
from service.db._events import Entry
from service.db._readonly import STREAMED, autocommits, readonly_bind
from service.db._session import (
    Bind,
    RolledBackError,
    UnitOfWorkError,
    _current,
    context_bind,
    current_unit_of_work,
    default_bind,
    failure_in,
    has_configured_bind,
    lost_writes,
    same_database,
    session,
)

__all__ = ["UnitOfWork", "on_commit", "unit_of_work"]

_T = TypeVar("_T")
_P = ParamSpec("_P")

# SQLSTATEs that mean "this transaction lost a race; run it again": serialization
# failure and deadlock. Nothing else is retried: a lost connection during COMMIT,
# for one, has an unknown outcome.
RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})

logger = logging.getLogger(__name__)


async def run_to_completion(coro: Coroutine[Any, Any, _T]) -> _T:
    """Await ``coro`` in a task of its own that a cancellation cannot interrupt.

    A COMMIT cut off by a cancellation has an unknown outcome, and a close cut
    off leaves a connection in an unknown state. The caller's cancellation is
    re-raised once ``coro`` is done, even if ``coro`` failed.
    """
    task = asyncio.ensure_future(coro)
    cancelled: asyncio.CancelledError | None = None
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError as error:
            if not task.done():
                cancelled = error
        except BaseException:
            break  # the task failed; its error is raised below
    if cancelled is not None:
        failure = None if task.cancelled() else task.exception()
        raise cancelled from failure
    return task.result()


class UnitOfWork:
    """One activation of a unit of work, owned by the task that created it.

    ``begin()`` makes it the task's unit of work; ``end()`` commits or rolls
    back, then closes. Nothing touches the database before the session is
    first used, and ``end()`` of a unit that never used it emits no SQL.
    """

    __slots__ = (
        "_children_turn",
        "_done",
        "_ended",
        "_left",
        "_token",
        "bind",
        "ending",
        "entry",
        "parent",
        "readonly",
        "session",
        "task",
        "turn",
    )

    def __init__(
        self, *, readonly: bool = False, bind: Bind | None = None, entry: Entry | None = None
    ) -> None:
        task = asyncio.current_task()
        if task is None:
            raise UnitOfWorkError("A unit of work must run inside an asyncio task.")
        self.task = task
        self.readonly = readonly
        if readonly:
            bind = readonly_bind(bind or session.session_factory.kw.get("bind"))
        self.bind = bind
        self.entry: Entry = entry or _events.entry_point.get()
        """Where the unit comes from, for its events (``service.db.events``)."""
        self.parent = _current.get()
        """The unit of work of the task this one's task was started from, if any."""
        self.session: AsyncSession | None = None
        """Set when the registry makes this unit's session, on first use."""
        self.turn: asyncio.Lock | None = None
        """In tests, the turn this unit holds on the shared connection (``join_sessions_to``)."""
        self._children_turn: asyncio.Lock | None = None
        self._token: Token[UnitOfWork | None] | None = None
        self._ended = False
        self._left = False
        self._done: asyncio.Event | None = None
        self.ending = False
        """Set when ``end()`` begins: in tests, child units no longer share its connection."""
        if readonly:  # replicas: a replica that has the caller's writes, if one is configured
            self.bind = route(self)

    def ancestors(self) -> Iterator[UnitOfWork]:
        """The parent's unit of work, its parent's, and so on."""
        unit = self.parent
        while unit is not None:
            yield unit
            unit = unit.parent

    def children_turn(self) -> asyncio.Lock:
        """The turn this unit's child units take on the shared connection, one at a time."""
        if self._children_turn is None:
            self._children_turn = asyncio.Lock()
        return self._children_turn

    async def wait_ended(self) -> None:
        """Wait until this unit of work has ended (committed or rolled back, and closed)."""
        if self._left:
            return
        if self._done is None:
            self._done = asyncio.Event()
        await self._done.wait()

    def begin(self, *, nested: bool = False) -> None:
        """Make this the current task's unit of work. No connection is opened yet.

        ``nested``: inside the task's unit of work, as one on another database.
        """
        current = _current.get()
        if current is not None and current.task is self.task and not nested:
            raise UnitOfWorkError(
                "This task already has a unit of work. Nest with `async with unit_of_work()` "
                "(a savepoint) instead of beginning a second one."
            )
        self._token = _current.set(self)
        if _events.unit_began:  # events: service.db.events
            _events.began(self)

    async def end(self, *, commit: bool, status: int | None = None) -> None:
        """Commit what the session did (whatever API did it), or roll back; then close.

        ``status``: a request's final status, which decided ``commit`` (for the events).

        A failed commit is rolled back and its error re-raised. Whatever happens,
        the session is closed and removed from the registry, the task leaves the
        unit of work, and then the callbacks of a successful commit run (so one
        that needs the database opens a unit of work of its own). Runs once, and
        may run in another task than the owner's.
        """
        if self._ended:
            return
        self._ended = True
        self.ending = True
        children = self._children_turn
        if children is not None:
            # In tests, children share this unit's connection: none may be in the middle of
            # its own transaction when this one ends (a task it started and did not wait for).
            await children.acquire()
        current, self.session = self.session, None
        failure, started = None, time.perf_counter()  # events
        if current is None:  # the database was never used: nothing to end but the scope
            if children is not None:
                children.release()
            self._leave()
            if _events.unit_ended:  # events: service.db.events
                _events.ended(self, None, commit, status, None, started)
            return
        lost = lost_writes(current) if commit else None
        if lost is not None:
            commit = False
        try:
            if (
                self.readonly
                and autocommits(self.bind)
                and not _callbacks.count(current)
                and not current.info.get(STREAMED)
            ):
                # Its statements ran in autocommit: there is no COMMIT to send, and with no
                # transaction on the wire closing sends nothing either, so it cannot be cut
                # off half-way and needs no shielded task.
                await _quietly(current.close())
                return
            try:
                if commit and (current.new or current.dirty or current.deleted):
                    # Flush in the owning task, where flush listeners may use
                    # the session, not in the shielded one below.
                    await current.flush()
            except BaseException:
                commit = False
                raise
            finally:
                await run_to_completion(_settle(current, commit=commit))
            if lost is not None:
                raise RolledBackError(lost) from lost
        except BaseException as error:  # events
            failure = error
            raise
        finally:
            if session.registry.registry.get(self) is current:
                del session.registry.registry[self]
            if self.turn is not None:
                self.turn.release()
                self.turn = None
            if children is not None:
                children.release()
            self._leave()
            if _events.unit_ended:  # events: service.db.events
                _events.ended(self, current, commit, status, failure, started)
            callbacks = _callbacks.take_committed(current)
            if callbacks:
                await run_to_completion(_callbacks.run(callbacks))

    def _leave(self) -> None:
        if self._token is not None:
            token, self._token = self._token, None
            try:
                _current.reset(token)
            except ValueError:
                pass  # ended from another context; the owner's goes with its task
        self._left = True
        if self._done is not None:
            self._done.set()


async def _settle(current: AsyncSession, *, commit: bool) -> None:
    """COMMIT (or not), then close, which rolls back whatever is left; in one shielded task."""
    try:
        if commit:
            try:
                await current.commit()
            except BaseException:
                # A COMMIT that failed may leave the transaction open (SQLite does
                # for a deferred foreign key): roll it back before closing.
                await _quietly(current.rollback())
                raise
    finally:
        await _quietly(current.close())


async def _quietly(cleanup: Coroutine[Any, Any, None]) -> None:
    # The outcome is decided by now, and a broken connection is discarded by
    # the pool: an error here must not replace a commit's error, nor fail a
    # committed unit of work.
    try:
        await cleanup
    except Exception:
        logger.warning("cleaning up the session failed", exc_info=True)


class unit_of_work:  # noqa: N801 - reads as a function, like contextlib's
    """Run a block or a coroutine as one unit of work.

    Commit on success, roll back on an exception, always remove the task's
    session. Inside another unit of work of the same task it opens a savepoint
    instead. As a decorator each call is entered afresh, which makes the
    coroutine safe to run as a child task (``asyncio.gather``, TaskGroup): there
    it is a unit of work of its own.

    ``readonly`` is a hint that the work only reads: on SQLite the transaction
    then begins DEFERRED so that readers stay concurrent (writes begin
    IMMEDIATE, taking the write lock at BEGIN). It changes nothing elsewhere.
    ``bind`` is the engine to use, by default the first serving app's.

    ``retries=N`` (decorator only) runs the whole coroutine again, up to N more
    times with exponential backoff from ``backoff`` seconds, when the unit of
    work fails on a serialization failure or a deadlock (SQLSTATE 40001, 40P01).
    A failed attempt has rolled back: its on-commit callbacks never run.
    """

    def __init__(
        self,
        *,
        readonly: bool = False,
        bind: Bind | None = None,
        retries: int = 0,
        backoff: float = 0.05,
    ) -> None:
        self.readonly = readonly
        self.bind = bind
        self.retries = retries
        self.backoff = backoff
        self._unit: UnitOfWork | None = None
        self._savepoint: AsyncSessionTransaction | None = None
        self._callbacks_before: int | None = None

    def _attempt(self) -> Self:
        """A fresh context manager for one attempt; the retries are the decorator's."""
        return type(self)(readonly=self.readonly, bind=self.bind)

    def __call__(
        self, function: Callable[_P, Awaitable[_T]]
    ) -> Callable[_P, Coroutine[Any, Any, _T]]:
        """Decorate a coroutine function: each call is a unit of work, retried if asked."""

        @functools.wraps(function)
        async def run(*args: _P.args, **kwargs: _P.kwargs) -> _T:
            attempt = 0
            while True:
                outermost = current_unit_of_work() is None
                try:
                    async with self._attempt():
                        return await function(*args, **kwargs)
                except DBAPIError as error:
                    # Inside another unit of work only that one can be run again.
                    if not outermost or attempt >= self.retries or not is_retryable(error):
                        raise
                attempt += 1
                delay = self.backoff * 2 ** (attempt - 1) * random.uniform(0.5, 1.5)
                logger.info("retrying a unit of work (attempt %d) in %.3fs", attempt + 1, delay)
                await asyncio.sleep(delay)

        return run

    async def __aenter__(self) -> None:
        active = (self._unit, self._savepoint, self._callbacks_before)
        if any(part is not None for part in active):
            raise UnitOfWorkError("This unit_of_work() is already active; it is not reentrant.")
        if self.retries:
            raise UnitOfWorkError(
                "`unit_of_work(retries=...)` re-runs a coroutine, which a `with` block cannot "
                "be: decorate the coroutine with `@unit_of_work(retries=...)` instead."
            )
        current = current_unit_of_work()
        if current is not None and self.bind is not None and not self._same_database(current):
            # A unit of work of its own on that database, committed when its block ends.
            unit = UnitOfWork(readonly=self.readonly, bind=self.bind)
            unit.begin(nested=True)
            self._unit = unit
            return
        if current is not None and current.readonly:
            # Nothing can be written, so there is nothing for a savepoint to undo (and on
            # PostgreSQL no transaction to hold one): only the callbacks are kept apart.
            self._callbacks_before = _callbacks.count(session())
            return
        if current is not None:
            self._savepoint = await session().begin_nested()
            return
        # An explicit bind; else, in a child task, the database of the unit it was started
        # from; else the current app's engine (a websocket, a background task, a CLI command);
        # else the first serving app's (or the test's connection); else a script's, from
        # DATABASE_URL if it is set.
        bind = (
            self.bind or _inherited(_current.get(), readonly=self.readonly) or await context_bind()
        )
        if bind is None and not has_configured_bind():
            bind = await default_engine()
        unit = UnitOfWork(readonly=self.readonly, bind=bind)
        unit.begin()
        self._unit = unit

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        unit, savepoint = self._unit, self._savepoint
        self._unit = self._savepoint = None
        if self._callbacks_before is not None:
            before, self._callbacks_before = self._callbacks_before, None
            if exc_type is not None:
                _callbacks.drop_after(session(), before)
            return
        if savepoint is not None:
            await _end_savepoint(savepoint, failed=exc_type is not None)
            return
        assert unit is not None
        if asyncio.current_task() is not unit.task:
            await unit.end(commit=False)
            raise UnitOfWorkError(
                "A unit of work was entered in one task and exited in another (as an async "
                "fixture's setup and teardown are); nothing was committed. Enter and exit it "
                "in the same task."
            )
        await unit.end(commit=exc_type is None)

    def _same_database(self, current: UnitOfWork) -> bool:
        assert self.bind is not None
        theirs = current.bind or default_bind()
        return theirs is None or same_database(self.bind, theirs)


async def _end_savepoint(savepoint: AsyncSessionTransaction, *, failed: bool) -> None:
    """Release the savepoint, or roll it back: on an exception, or a failure inside it.

    A failure the block caught and went on from still rolls the savepoint back, and
    is raised: the block's writes are gone, and must not pass for saved.
    """
    current = session()
    transaction = savepoint.sync_transaction
    inside = None if transaction is None else failure_in(current, transaction)
    if not failed and inside is None:
        await savepoint.commit()
        return
    if _open(current, savepoint):
        await savepoint.rollback()
    if not failed and inside is not None:
        raise UnitOfWorkError(
            f"{type(inside).__name__} was raised inside this savepoint (`async with "
            "unit_of_work():`), and the block caught it and went on: its writes were rolled "
            "back. Let the error leave the block, and catch it around the `async with`."
        ) from inside


def _open(current: AsyncSession, savepoint: AsyncSessionTransaction) -> bool:
    """Whether ``savepoint`` is still among the session's transactions (not yet ended)."""
    transaction = current.sync_session.get_nested_transaction()
    while transaction is not None:
        if transaction is savepoint.sync_transaction:
            return True
        transaction = transaction.parent
    return False


def _inherited(parent: UnitOfWork | None, *, readonly: bool) -> Bind | None:
    """The bind of the unit a child task's unit was started from (another task's), if any.

    A read-only unit's bind (in autocommit, or a replica's) is inherited by read-only
    children only: a writing child of a read-only unit gets the default engine.
    """
    if parent is None or (parent.readonly and not readonly):
        return None
    return parent.bind


def is_retryable(error: DBAPIError) -> bool:
    """Whether the database refused the transaction for losing a race (40001, 40P01)."""
    sqlstate = getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None)
    return sqlstate in RETRYABLE_SQLSTATES


def on_commit(callback: _callbacks.Callback) -> None:
    """Run ``callback`` (sync or async) once the current unit of work has committed.

    It is dropped if the unit of work rolls back, or if the savepoint it was
    registered in rolls back. It runs after the task has left the unit of work,
    so database work in it needs a unit of work of its own. A failing callback
    is logged; the commit stands.
    """
    _callbacks.register(session(), callback)
