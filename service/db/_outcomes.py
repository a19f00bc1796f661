"""How a unit of work ended, for its events (``service.db.events``): classified here, above
the session, so that the events module below stays a list of signals."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm.exc import StaleDataError

from service.db._context import RolledBackError, Unit
from service.db._engine import autocommits
from service.db._events import (
    SEEN,
    Outcome,
    UnitOfWorkBegan,
    UnitOfWorkEnded,
    unit_began,
    unit_ended,
)
from service.db._outage import is_outage

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

__all__ = ["began", "ended"]

_CONFLICT_SQLSTATES = frozenset({"40001", "40P01"})


def began(unit: Unit) -> None:
    """``unit`` has begun (``UnitOfWork.begin``)."""
    unit_began.send(UnitOfWorkBegan(unit, unit.entry, unit.readonly, unit.task))


def ended(
    unit: Unit,
    session: AsyncSession | None,
    commit: bool,
    status: int | None,
    failure: BaseException | None,
    started: float,
    /,
) -> None:
    """``unit`` has ended (``UnitOfWork.end``): classify, and send ``unit_ended``.

    ``commit``: whether a COMMIT was still to be attempted once the flush was done (so
    ``False`` after a failed flush); ``failure``: what ``end`` raised; ``started``: when
    ``end`` began (``time.perf_counter()``).
    """
    outcome, error = _classify(session, commit, status, failure)
    # A read-only unit on PostgreSQL ran its statements in autocommit: it sends no COMMIT.
    attempted = commit and session is not None and not (unit.readonly and autocommits(unit.bind))
    seconds = time.perf_counter() - started if attempted else None
    unit_ended.send(
        UnitOfWorkEnded(unit, unit.entry, unit.readonly, unit.task, outcome, status, error, seconds)
    )


def _classify(
    session: AsyncSession | None,
    commit: bool,
    status: int | None,
    failure: BaseException | None,
) -> tuple[Outcome, BaseException | None]:
    if session is None:
        return "unused", None
    if isinstance(failure, asyncio.CancelledError):
        # Cancelled while ending: a COMMIT under way ran to completion all the same
        # (shielded), and what it raised, if anything, is the cancellation's cause.
        if not commit:
            return "rolled_back_exception", None
        failure = failure.__cause__
    if isinstance(failure, RolledBackError):
        # An earlier failure, caught by the handler, had rolled the writes back: that
        # failure is the outcome's cause, and a handler's exception if nothing else.
        return _failed(failure.cause) or "rolled_back_exception", failure.cause
    if failure is not None:  # the flush or the COMMIT failed
        return _failed(failure) or "failed_commit", failure
    if commit:
        return "committed", None
    seen = session.info.get(SEEN)
    kind = _failed(seen) if seen is not None else None
    if kind is not None:
        return kind, seen
    return ("rolled_back_status" if status is not None else "rolled_back_exception"), None


def _failed(error: BaseException) -> Outcome | None:
    if isinstance(error, (IntegrityError, StaleDataError)):
        return "conflict"
    if isinstance(error, DBAPIError):
        sqlstate = getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None)
        if sqlstate in _CONFLICT_SQLSTATES:
            return "conflict"
    if is_outage(error):
        return "outage"
    return None
