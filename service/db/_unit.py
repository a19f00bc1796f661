"""The unit of work: one task, one session, one transaction, committed only on success.

``UnitOfWork`` is the primitive every integration drives (the Quart request
hooks, and ``unit_of_work()`` for everything else): ``begin()``, then
``end(commit=...)``, always.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Iterator
from contextvars import Token
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from service.db import _callbacks, _events, _listeners, _outcomes
from service.db._causal import route
from service.db._context import Bind, RolledBackError, Unit, UnitOfWorkError, current, unit_hooks
from service.db._engine import autocommits, readonly_bind
from service.db._events import Entry
from service.db._readonly import STREAMED
from service.db._session import lost_writes, session

__all__ = ["UnitOfWork", "run_to_completion"]

_T = TypeVar("_T")

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
    )

    def __init__(
        self, *, readonly: bool = False, bind: Bind | None = None, entry: Entry | None = None
    ) -> None:
        task = asyncio.current_task()
        if task is None:
            raise UnitOfWorkError("A unit of work must run inside an asyncio task.")
        _listeners.install()
        self.task = task
        self.readonly = readonly
        if readonly:
            bind = readonly_bind(bind or session.session_factory.kw.get("bind"))
        self.bind = bind
        self.entry: Entry = entry or _events.entry_point.get()
        """Where the unit comes from, for its events (``service.db.events``)."""
        self.parent: Unit | None = current.get()
        """The unit of work of the task this one's task was started from, if any."""
        self.session: AsyncSession | None = None
        """Set when the registry makes this unit's session, on first use."""
        self._token: Token[Unit | None] | None = None
        self._ended = False
        self._left = False
        self._done: asyncio.Event | None = None
        self.ending = False
        """Set when ``end()`` begins (in tests, child units no longer share its connection)."""
        if readonly:  # replicas: a replica that has the caller's writes, if one is configured
            self.bind = route(self)

    def ancestors(self) -> Iterator[Unit]:
        """The parent's unit of work, its parent's, and so on."""
        unit = self.parent
        while unit is not None:
            yield unit
            unit = unit.parent

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
        active = current.get()
        if active is not None and active.task is self.task and not nested:
            raise UnitOfWorkError(
                "This task already has a unit of work. Nest with `async with unit_of_work()` "
                "(a savepoint) instead of beginning a second one."
            )
        self._token = current.set(self)
        if _events.unit_began:  # events: service.db.events
            _outcomes.began(self)

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
        for hooks in unit_hooks:  # in tests: no child sharing its connection is mid-way
            await hooks.ending(self)
        used, self.session = self.session, None
        failure, started = None, time.perf_counter()  # events
        if used is None:  # the database was never used: nothing to end but the scope
            self._finish()
            if _events.unit_ended:  # events: service.db.events
                _outcomes.ended(self, None, commit, status, None, started)
            return
        lost = lost_writes(used) if commit else None
        if lost is not None:
            commit = False
        try:
            if (
                self.readonly
                and autocommits(self.bind)
                and not _callbacks.count(used)
                and not used.info.get(STREAMED)
            ):
                # Its statements ran in autocommit: there is no COMMIT to send, and with no
                # transaction on the wire closing sends nothing either, so it cannot be cut
                # off half-way and needs no shielded task.
                await _quietly(used.close())
                return
            try:
                if commit and (used.new or used.dirty or used.deleted):
                    # Flush in the owning task, where flush listeners may use
                    # the session, not in the shielded one below.
                    await used.flush()
            except BaseException:
                commit = False
                raise
            finally:
                await run_to_completion(_settle(used, commit=commit))
            if lost is not None:
                raise RolledBackError(lost) from lost
        except BaseException as error:  # events
            failure = error
            raise
        finally:
            if session.registry.registry.get(self) is used:
                del session.registry.registry[self]
            self._finish()
            if _events.unit_ended:  # events: service.db.events
                _outcomes.ended(self, used, commit, status, failure, started)
            callbacks = _callbacks.take_committed(used)
            if callbacks:
                await run_to_completion(_callbacks.run(callbacks))

    def _finish(self) -> None:
        for hooks in unit_hooks:
            hooks.ended(self)
        self._leave()

    def _leave(self) -> None:
        if self._token is not None:
            token, self._token = self._token, None
            try:
                current.reset(token)
            except ValueError:
                pass  # ended from another context; the owner's goes with its task
        self._left = True
        if self._done is not None:
            self._done.set()


async def _settle(used: AsyncSession, *, commit: bool) -> None:
    """COMMIT (or not), then close, which rolls back whatever is left; in one shielded task."""
    try:
        if commit:
            try:
                await used.commit()
            except BaseException:
                # A COMMIT that failed may leave the transaction open (SQLite does
                # for a deferred foreign key): roll it back before closing.
                await _quietly(used.rollback())
                raise
    finally:
        await _quietly(used.close())


async def _quietly(cleanup: Coroutine[Any, Any, None]) -> None:
    # The outcome is decided by now, and a broken connection is discarded by
    # the pool: an error here must not replace a commit's error, nor fail a
    # committed unit of work.
    try:
        await cleanup
    except Exception:
        logger.warning("cleaning up the session failed", exc_info=True)
