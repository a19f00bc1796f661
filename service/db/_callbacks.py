"""On-commit callbacks: kept with the session, released only by the outermost commit.

SQLAlchemy's ``after_commit`` event also fires when a savepoint is released, and
a rollback may end a savepoint only. So each callback remembers the innermost
savepoint it was registered in; a rollback drops the callbacks registered at or
below the transaction it really rolled back, and only the commit of the root
transaction hands the survivors over to be run.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TypeAlias

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, SessionTransaction

from service.db._session import _Session

Callback: TypeAlias = Callable[[], Awaitable[object] | object]

_PENDING = "service.db.on_commit.pending"
_COMMITTED = "service.db.on_commit.committed"

logger = logging.getLogger(__name__)


def register(session: AsyncSession, callback: Callback) -> None:
    """Keep ``callback`` until the session's root transaction commits."""
    savepoint = session.sync_session.get_nested_transaction()
    session.info.setdefault(_PENDING, []).append((savepoint, callback))


def count(session: AsyncSession) -> int:
    """How many callbacks wait for the session's commit."""
    return len(session.info.get(_PENDING, ()))


def drop_after(session: AsyncSession, kept: int) -> None:
    """Drop the callbacks registered after the first ``kept`` (a block that failed)."""
    pending = session.info.get(_PENDING)
    if pending:
        del pending[kept:]


def take_committed(session: AsyncSession) -> list[Callback]:
    """The callbacks whose transaction has committed, removed from the session."""
    callbacks: list[Callback] = session.info.pop(_COMMITTED, [])
    return callbacks


class CapturedCallbacks(list[Callback]):
    """Committed callbacks captured by a test instead of, or as well as, being run."""

    def __init__(self, *, execute: bool) -> None:
        super().__init__()
        self.execute = execute

    async def run(self) -> None:
        """Run the held callbacks as a commit would have, and forget them."""
        callbacks, self[:] = list(self), []
        await _run(callbacks)


# The test's capture, if any: committed callbacks are handed to it.
_capture: CapturedCallbacks | None = None


@contextmanager
def capturing(captured: CapturedCallbacks) -> Iterator[None]:
    global _capture
    if _capture is not None:
        raise RuntimeError("on-commit callbacks are already being captured")
    _capture = captured
    try:
        yield
    finally:
        _capture = None


async def run(callbacks: list[Callback]) -> None:
    """Run committed callbacks in order; a failure is logged and does not stop the rest.

    The data they depend on is already committed: a failing callback must not
    turn a successful unit of work into an error that claims nothing was written.
    A test capturing callbacks gets them instead, or as well.
    """
    if _capture is not None:
        _capture.extend(callbacks)
        if not _capture.execute:
            return
    await _run(callbacks)


async def _run(callbacks: list[Callback]) -> None:
    for callback in callbacks:
        try:
            result = callback()
            if inspect.isawaitable(result):
                await result
        except Exception:
            logger.exception("on_commit callback %r failed after the commit", callback)


def _after_commit(session: Session) -> None:
    if session.in_nested_transaction():
        return  # a savepoint was released; the outer transaction may still roll back
    pending = session.info.pop(_PENDING, None)
    if pending:
        session.info.setdefault(_COMMITTED, []).extend(callback for _, callback in pending)


def _after_soft_rollback(session: Session, previous: SessionTransaction) -> None:
    pending: list[tuple[SessionTransaction | None, Callback]] | None = session.info.get(_PENDING)
    if not pending:
        return
    # A subtransaction (a flush's) rolls back the nearest savepoint, or the root.
    boundary = previous
    while boundary.parent is not None and not boundary.nested:
        boundary = boundary.parent
    if boundary.parent is None:
        pending.clear()
    else:
        pending[:] = [item for item in pending if not _within(item[0], boundary)]


def _within(transaction: SessionTransaction | None, ancestor: SessionTransaction) -> bool:
    while transaction is not None:
        if transaction is ancestor:
            return True
        transaction = transaction.parent
    return False


def listen() -> None:
    """Install this module's session listeners (``_listeners.install``)."""
    event.listen(_Session, "after_commit", _after_commit)
    event.listen(_Session, "after_soft_rollback", _after_soft_rollback)
