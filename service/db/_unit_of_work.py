"""``unit_of_work()``: a block or a coroutine as one unit of work, a savepoint when nested;
and ``on_commit()``. Everything but the Quart request hooks begins units of work here."""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import Awaitable, Callable, Coroutine
from types import TracebackType
from typing import Any, ParamSpec, Self, TypeVar

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, AsyncSessionTransaction

from service.db import _callbacks
from service.db._context import (
    Bind,
    Unit,
    UnitOfWorkError,
    context_bind,
    current,
    current_unit_of_work,
)
from service.db._engine import default_engine
from service.db._session import (
    default_bind,
    failure_in,
    has_configured_bind,
    same_database,
    session,
)
from service.db._unit import UnitOfWork

__all__ = ["on_commit", "unit_of_work"]

_T = TypeVar("_T")
_P = ParamSpec("_P")

# SQLSTATEs that mean "this transaction lost a race; run it again": serialization
# failure and deadlock. Nothing else is retried: a lost connection during COMMIT,
# for one, has an unknown outcome.
RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})

logger = logging.getLogger(__name__)


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
        parts = (self._unit, self._savepoint, self._callbacks_before)
        if any(part is not None for part in parts):
            raise UnitOfWorkError("This unit_of_work() is already active; it is not reentrant.")
        if self.retries:
            raise UnitOfWorkError(
                "`unit_of_work(retries=...)` re-runs a coroutine, which a `with` block cannot "
                "be: decorate the coroutine with `@unit_of_work(retries=...)` instead."
            )
        active = current_unit_of_work()
        if active is not None and self.bind is not None and not self._same_database(active):
            # A unit of work of its own on that database, committed when its block ends.
            unit = UnitOfWork(readonly=self.readonly, bind=self.bind)
            unit.begin(nested=True)
            self._unit = unit
            return
        if active is not None and active.readonly:
            # Nothing can be written, so there is nothing for a savepoint to undo (and on
            # PostgreSQL no transaction to hold one): only the callbacks are kept apart.
            self._callbacks_before = _callbacks.count(session())
            return
        if active is not None:
            self._savepoint = await session().begin_nested()
            return
        # An explicit bind; else, in a child task, the database of the unit it was started
        # from; else the current app's engine (a websocket, a background task, a CLI command);
        # else the first serving app's (or the test's connection); else a script's, from
        # DATABASE_URL if it is set.
        bind = (
            self.bind or _inherited(current.get(), readonly=self.readonly) or await context_bind()
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

    def _same_database(self, active: Unit) -> bool:
        assert self.bind is not None
        theirs = active.bind or default_bind()
        return theirs is None or same_database(self.bind, theirs)


async def _end_savepoint(savepoint: AsyncSessionTransaction, *, failed: bool) -> None:
    """Release the savepoint, or roll it back: on an exception, or a failure inside it.

    A failure the block caught and went on from still rolls the savepoint back, and
    is raised: the block's writes are gone, and must not pass for saved.
    """
    active = session()
    transaction = savepoint.sync_transaction
    inside = None if transaction is None else failure_in(active, transaction)
    if not failed and inside is None:
        await savepoint.commit()
        return
    if _open(active, savepoint):
        await savepoint.rollback()
    if not failed and inside is not None:
        raise UnitOfWorkError(
            f"{type(inside).__name__} was raised inside this savepoint (`async with "
            "unit_of_work():`), and the block caught it and went on: its writes were rolled "
            "back. Let the error leave the block, and catch it around the `async with`."
        ) from inside


def _open(active: AsyncSession, savepoint: AsyncSessionTransaction) -> bool:
    """Whether ``savepoint`` is still among the session's transactions (not yet ended)."""
    transaction = active.sync_session.get_nested_transaction()
    while transaction is not None:
        if transaction is savepoint.sync_transaction:
            return True
        transaction = transaction.parent
    return False


def _inherited(parent: Unit | None, *, readonly: bool) -> Bind | None:
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
