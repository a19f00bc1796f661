"""What the layer does, published as typed events: for metrics, traces and logs.

    from service.db import events

    @events.unit_ended.connect
    def count(event: events.UnitOfWorkEnded) -> None:
        print(event.entry, event.outcome, event.commit_seconds)

Each signal carries one event class. A listener is called at once, in the task
(and thread) where the event happens: it must be quick, must not block, and must
not use the database. An exception in a listener is logged and otherwise
ignored: instrumentation never changes what a unit of work does. A signal
without listeners costs a truth test, and no event is even made.

The signals of ``service.db``:

- ``unit_began`` / ``unit_ended``: a unit of work begins (its task's context is
  the unit's from there on: a tracing listener can make its span current) and
  ends, with its entry point and outcome (``UnitOfWorkEnded``). A unit that never
  used the database has nothing to commit or roll back: it ends with outcome
  ``unused``.
- ``pool_checkout`` / ``pool_checkin``: a connection taken from one of the layer's
  engines' pools (after ``waited`` seconds, or a timeout) and given back, with the
  pool's figures after each.
- ``writer_queued`` / ``writer_admitted``: SQLite writers queueing at the process's
  writer gate (``_sqlite``) and getting through it.
- ``replica_read`` / ``replica_polled``, with read replicas (``_replicas``): the
  server a read-only unit reads from (and why the primary, if it is), and each
  replica as the poller saw it.

``service.jobs`` publishes its own (``service.jobs.events``) with ``Signal``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, Literal, TypeVar

from sqlalchemy.engine import ExceptionContext

from service.db._context import current_unit_of_work

if TYPE_CHECKING:
    from sqlalchemy.pool import Pool

__all__ = [
    "Entry",
    "Outcome",
    "PoolCheckin",
    "PoolCheckout",
    "ReplicaPolled",
    "ReplicaRead",
    "Signal",
    "UnitOfWorkBegan",
    "UnitOfWorkEnded",
    "WriterAdmitted",
    "WriterQueued",
    "entry_point",
    "pool_checkin",
    "pool_checkout",
    "replica_polled",
    "replica_read",
    "running_as",
    "unit_began",
    "unit_ended",
    "writer_admitted",
    "writer_queued",
]

logger = logging.getLogger(__name__)

E = TypeVar("E")

Entry = str
"""Where a unit of work comes from: ``request`` (an HTTP request), ``job`` (a job's delivery),
``dispatcher`` (the jobs dispatcher's own upkeep of the outbox: sweeps, claims, lease
renewals), ``cli`` (a ``service`` command), ``script`` (anything else: the default), or
whatever an app labels its own with ``running_as``."""

Outcome = Literal[
    "committed",
    "rolled_back_status",
    "rolled_back_exception",
    "failed_commit",
    "conflict",
    "outage",
    "unused",
]
"""How a unit of work ended.

- ``committed``: it asked to commit, and did (a read-only unit on PostgreSQL, whose
  statements ran in autocommit, when it would have);
- ``rolled_back_status``: rolled back because the request's final status was 400 or more;
- ``rolled_back_exception``: rolled back because an exception left it (a handler's
  error, a cancelled request, a failed command or job attempt);
- ``conflict``: a constraint violation, a stale version or a lost serialization race
  (SQLSTATE 40001, 40P01), at COMMIT or in a statement before it;
- ``outage``: the database could not be reached or used (``_outage``), at COMMIT or
  in a statement before it, pool timeouts included;
- ``failed_commit``: any other failure of the flush or the COMMIT;
- ``unused``: it never used the database.
"""

SEEN = "service.db.events.error"
"""The key in a unit's ``session.info`` of the last database error its statements raised."""


class Signal(Generic[E]):
    """A list of listeners for one event class; ``bool(signal)`` says whether it has any."""

    __slots__ = ("_listeners", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._listeners: tuple[Callable[[E], object], ...] = ()

    def connect(self, listener: Callable[[E], object]) -> Callable[[E], object]:
        """Call ``listener(event)`` for each event from now on; returns it (a decorator)."""
        if listener not in self._listeners:
            self._listeners = (*self._listeners, listener)
        return listener

    def disconnect(self, listener: Callable[[E], object]) -> None:
        self._listeners = tuple(known for known in self._listeners if known != listener)

    def __bool__(self) -> bool:
        return bool(self._listeners)

    def __repr__(self) -> str:
        return f"<Signal {self.name}: {len(self._listeners)} listeners>"

    def send(self, event: E) -> None:
        """Call every listener with ``event``; a listener's exception is logged, never raised."""
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                logger.exception("a listener of %s failed", self.name)


@dataclass(frozen=True, slots=True)
class UnitOfWorkBegan:
    """A unit of work began in ``task``; ``unit`` is the same object in its end's event."""

    unit: object
    entry: Entry
    readonly: bool
    task: asyncio.Task[object]


@dataclass(frozen=True, slots=True)
class UnitOfWorkEnded:
    """A unit of work ended: its entry point, its outcome, and what decided it."""

    unit: object
    entry: Entry
    readonly: bool
    task: asyncio.Task[object]
    outcome: Outcome
    status: int | None
    """The request's final status, for a request's unit."""
    error: BaseException | None
    """The error that decided the outcome (a failed COMMIT, a conflict or outage seen)."""
    commit_seconds: float | None
    """How long the flush, the COMMIT and the connection's return took; ``None`` when no
    COMMIT was attempted."""


@dataclass(frozen=True, slots=True)
class PoolCheckout:
    """A connection was checked out of ``pool`` after ``waited`` seconds, or not (a timeout)."""

    pool: Pool
    waited: float
    timed_out: bool
    checked_out: int
    """Connections the pool has out now (this one included)."""
    overflow: int
    """Connections open beyond the pool's size now."""


@dataclass(frozen=True, slots=True)
class PoolCheckin:
    """A connection went back to ``pool``."""

    pool: Pool
    checked_out: int
    overflow: int


@dataclass(frozen=True, slots=True)
class WriterQueued:
    """The number of writers waiting at the SQLite writer gate of ``database`` changed."""

    database: str
    waiting: int


@dataclass(frozen=True, slots=True)
class WriterAdmitted:
    """A writer got through the SQLite writer gate of ``database`` after ``waited`` seconds."""

    database: str
    waited: float


@dataclass(frozen=True, slots=True)
class ReplicaRead:
    """A read-only unit reads from ``server`` (``primary`` or a replica's name) from now on.

    Sent when it first reads, and again if it moves: a statement that failed on its
    replica runs again on the primary (``moved_from`` names the replica).
    """

    server: str
    fallback: str | None
    """Why the primary, when it is: ``behind``, ``unavailable``, ``failed``,
    ``no_position``, ``asked`` or ``outside`` (``ReplicaStats.fallbacks``)."""
    moved_from: str | None = None


@dataclass(frozen=True, slots=True)
class ReplicaPolled:
    """The poller's verdict on one replica: in the rotation or not, and how far behind."""

    replica: str
    in_rotation: bool
    lag_seconds: float | None
    """How old the oldest primary position it has not replayed is; ``None``: unknown."""
    lag_bytes: int | None


unit_began: Signal[UnitOfWorkBegan] = Signal("unit_began")
unit_ended: Signal[UnitOfWorkEnded] = Signal("unit_ended")
pool_checkout: Signal[PoolCheckout] = Signal("pool_checkout")
pool_checkin: Signal[PoolCheckin] = Signal("pool_checkin")
writer_queued: Signal[WriterQueued] = Signal("writer_queued")
writer_admitted: Signal[WriterAdmitted] = Signal("writer_admitted")
replica_read: Signal[ReplicaRead] = Signal("replica_read")
replica_polled: Signal[ReplicaPolled] = Signal("replica_polled")

entry_point: ContextVar[Entry] = ContextVar("service_db_entry_point", default="script")
"""The entry point of the units of work begun in this context (``running_as``)."""


@contextmanager
def running_as(entry: Entry) -> Iterator[None]:
    """Label the units of work begun inside the block (in this task) with ``entry``."""
    token = entry_point.set(entry)
    try:
        yield
    finally:
        entry_point.reset(token)


def seen(error: BaseException) -> None:
    """Remember ``error`` as the last database error of the current unit of work."""
    unit = current_unit_of_work()
    if unit is not None and unit.session is not None:
        unit.session.info[SEEN] = error


def handle_error(context: ExceptionContext) -> None:
    """The engines' ``handle_error`` listener: a statement's (or a connection's) error."""
    seen(context.sqlalchemy_exception or context.original_exception)


class writer_waiting:  # noqa: N801 - reads as a function, like contextlib's
    """Around a writer's wait at the SQLite gate: the queue's length, and the wait."""

    __slots__ = ("_counts", "_database", "_started")

    _waiting: dict[str, int] = {}

    def __init__(self, database: str) -> None:
        self._database = database
        self._counts = bool(writer_queued)
        self._started = 0.0

    def __enter__(self) -> None:
        if self._counts:
            waiting = self._waiting[self._database] = self._waiting.get(self._database, 0) + 1
            writer_queued.send(WriterQueued(self._database, waiting))
        if writer_admitted:
            self._started = time.perf_counter()

    def __exit__(self, *exc_info: object) -> None:
        if self._counts:
            waiting = self._waiting[self._database] = self._waiting[self._database] - 1
            writer_queued.send(WriterQueued(self._database, waiting))
        if writer_admitted and exc_info[0] is None:
            writer_admitted.send(
                WriterAdmitted(self._database, time.perf_counter() - self._started)
            )
