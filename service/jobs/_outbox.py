"""The outbox: the ``jobs`` table, and every statement that moves a job through it.

A row is written by ``enqueue()`` in the enqueuing unit of work's own transaction,
so it exists exactly when that unit committed. Its ``state``:

- ``scheduled``: waiting until ``due_at`` (a retry's backoff, a periodic job's next
  run, or a job enqueued where no dispatcher runs);
- ``queued``: delivery number ``attempts`` was handed over (to this process's
  dispatcher, or to the broker) and should start before ``due_at``;
- ``running``: delivery number ``attempts`` runs on ``owner``, whose lease ends at
  ``due_at`` unless it is renewed;
- ``dead``: its last attempt failed; ``last_error`` says how.

Whatever the state, a row whose ``due_at`` has passed is a sweeper's to take
again: nothing ever waits on a process that is gone. Taking a job for a new
delivery adds one to ``attempts``, so ``(id, attempts)`` names one delivery:
starting it, renewing its lease, acknowledging it (``ack``, in the job's own unit
of work) and recording its failure all require that pair, and fail once another
delivery has taken over. (A message the broker may still hold is sent again
under the same number instead, ``relay``: whichever copy a worker gets first
starts the delivery, the others find it no longer queued.)
Every function here runs in the current unit of work.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Index,
    Integer,
    String,
    Text,
    delete,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.orm import Mapped, mapped_column

from service.db import Model, session, wal_position

__all__ = [
    "ACTIVE",
    "Delivery",
    "JobRow",
    "LeaseLost",
    "ack",
    "claim",
    "due",
    "mark_dead",
    "queued",
    "relay",
    "release",
    "renew",
    "reschedule",
    "take",
    "utcnow",
]

STATES = ("scheduled", "queued", "running", "dead")
ACTIVE = ("queued", "running")
"""States in which a delivery holds the job."""
_RENEW_CHUNK = 400  # (id, attempts) pairs per statement, under SQLite's variable limit
_POSITION = wal_position().label("position")


def utcnow() -> datetime:
    """Now, as the table stores it: naive UTC."""
    return datetime.now(UTC).replace(tzinfo=None)


class JobRow(Model):
    """One job in the outbox; finished jobs are deleted, dead ones kept (``prune_dead``)."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint("state IN ('scheduled', 'queued', 'running', 'dead')", name="state_known"),
        Index("ix_jobs_due_at", "due_at"),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(255))
    """The registered job (``module.function``)."""
    args: Mapped[list[Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    """Deliveries so far, the current one included."""
    due_at: Mapped[datetime | None] = mapped_column(DateTime)
    """When the sweeper may take the job (again); ``None`` once dead."""
    owner: Mapped[str | None] = mapped_column(String(100))
    """The process that holds the lease (``host:pid:nonce``), or the one a queued job was
    reserved for."""
    dedupe_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    """A periodic job's name: at most one row at a time carries it."""
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    queued_at: Mapped[datetime | None] = mapped_column(DateTime)
    """When the current delivery was handed over."""
    ended_at: Mapped[datetime | None] = mapped_column(DateTime)
    """When it went dead."""
    headers: Mapped[dict[str, str] | None] = mapped_column(JSON)
    """What ``job_enqueued``'s listeners added (``events``): a trace context, say; handed to
    each delivery, in whatever process."""


class LeaseLost(Exception):
    """Another delivery has taken the job over (or it is gone): this one must not commit."""


@dataclass(frozen=True)
class Delivery:
    """Delivery number ``attempt`` of job ``id``, held until ``deadline`` (naive UTC)."""

    id: int
    attempt: int
    name: str
    args: tuple[Any, ...]
    deadline: datetime
    headers: Mapping[str, str] = field(default_factory=dict)
    position: str | None = None
    """Where the database's WAL was when the delivery was taken (PostgreSQL): past the
    commit of the job's enqueuer, so the job reads what its enqueuer wrote on any replica
    (``service.db.reading_after``). ``None`` when not known (a kick in the enqueuing process
    carries its enqueuer's position in its context instead)."""

    @property
    def token(self) -> tuple[int, int]:
        return (self.id, self.attempt)


def _delivery(row: Any, deadline: datetime) -> Delivery:
    return Delivery(
        row.id,
        row.attempts,
        row.name,
        tuple(row.args),
        deadline,
        row.headers or {},
        getattr(row, "position", None),
    )


async def due(now: datetime | None = None) -> bool:
    """Whether any job is due: a read, so that an idle sweeper never writes."""
    query = select(JobRow.id).where(JobRow.due_at <= (now or utcnow())).limit(1)
    return await session.scalar(query) is not None


def _due_candidates(now: datetime, limit: int) -> Any:
    """Up to ``limit`` due jobs, oldest due first; locked, skipping rows others have locked.

    On PostgreSQL that is ``FOR UPDATE SKIP LOCKED``, so two takers never get the
    same row; SQLite has no row locks (the clause is left out) and needs none: the
    writing unit of work holds the database's write lock from its BEGIN.
    """
    return (
        select(JobRow.id)
        .where(JobRow.due_at <= now)
        .order_by(JobRow.due_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )


async def take(
    *,
    limit: int,
    owner: str,
    lease: timedelta,
    ids: Sequence[int] | None = None,
    not_due: bool = False,
) -> list[Delivery]:
    """Take up to ``limit`` due jobs for a new delivery each, ``running`` on ``owner`` with a
    lease of ``lease``.

    ``ids``: those jobs, due or not (not dead). ``not_due``: scheduled jobs too,
    retries waiting out their backoff (not periodic ones, whose due time is their
    schedule).
    """
    now = utcnow()
    if ids is not None:
        candidates = select(JobRow.id).where(JobRow.id.in_(ids), JobRow.due_at.is_not(None))
    elif not_due:
        waiting = (JobRow.state == "scheduled") & JobRow.dedupe_key.is_(None)
        candidates = (
            select(JobRow.id)
            .where(or_(JobRow.due_at <= now, waiting))
            .order_by(JobRow.due_at)
            .limit(limit)
        )
    else:
        candidates = _due_candidates(now, limit)
    chosen = list((await session.scalars(candidates.with_for_update(skip_locked=True))).all())
    if not chosen:
        return []
    deadline = now + lease
    rows = await session.execute(
        update(JobRow)
        .where(JobRow.id.in_(chosen))
        .values(
            state="running",
            owner=owner,
            attempts=JobRow.attempts + 1,
            due_at=deadline,
            queued_at=now,
        )
        .returning(JobRow.id, JobRow.attempts, JobRow.name, JobRow.args, JobRow.headers, _POSITION)
        .execution_options(synchronize_session=False)
    )
    return sorted((_delivery(row, deadline) for row in rows), key=lambda d: d.id)


async def relay(*, limit: int, lease: timedelta) -> list[Delivery]:
    """Take up to ``limit`` due jobs to (re)send to the broker, ``queued`` for ``lease``.

    A job still queued keeps its number: its message may only be late, behind a
    long queue, and is sent again, the next time after a wait as long as it has
    waited so far (so a deep queue gets a few copies, never one per lease). Any
    other (scheduled, or a lease run out) is queued for a new delivery.
    """
    now = utcnow()
    chosen = list((await session.scalars(_due_candidates(now, limit))).all())
    if not chosen:
        return []
    rows = (
        await session.execute(
            select(JobRow.id, JobRow.state, JobRow.attempts, JobRow.queued_at).where(
                JobRow.id.in_(chosen)
            )
        )
    ).all()
    again, new = [], []
    for row in rows:
        if row.state == "queued" and row.queued_at is not None:
            wait = max(lease, now - row.queued_at)
            again.append({"id": row.id, "due_at": now + wait})
        else:
            new.append(row.id)
    if again:
        await session.execute(update(JobRow), again)  # by primary key, one executemany
    if new:
        await session.execute(
            update(JobRow)
            .where(JobRow.id.in_(new))
            .values(
                state="queued",
                owner=None,
                attempts=JobRow.attempts + 1,
                due_at=now + lease,
                queued_at=now,
            )
            .execution_options(synchronize_session=False)
        )
    sent = await session.execute(
        select(JobRow.id, JobRow.attempts, JobRow.name, JobRow.args, JobRow.headers, JobRow.due_at)
        .where(JobRow.id.in_(chosen))
        .order_by(JobRow.id)
    )
    return [_delivery(row, row.due_at) for row in sent]


async def queued(job_id: int, attempt: int) -> bool:
    """Whether delivery ``(job_id, attempt)`` is queued: a read, before ``claim`` writes."""
    query = select(JobRow.id).where(
        JobRow.id == job_id, JobRow.attempts == attempt, JobRow.state == "queued"
    )
    return await session.scalar(query) is not None


async def claim(job_id: int, attempt: int, *, owner: str, lease: timedelta) -> Delivery | None:
    """Start the queued delivery ``(job_id, attempt)`` on ``owner``; ``None`` if it is no longer
    queued under that number (delivered twice, taken over, finished)."""
    deadline = utcnow() + lease
    row = (
        await session.execute(
            update(JobRow)
            .where(JobRow.id == job_id, JobRow.attempts == attempt, JobRow.state == "queued")
            .values(state="running", owner=owner, due_at=deadline)
            .returning(
                JobRow.id, JobRow.attempts, JobRow.name, JobRow.args, JobRow.headers, _POSITION
            )
            .execution_options(synchronize_session=False)
        )
    ).first()
    return None if row is None else _delivery(row, deadline)


async def renew(
    tokens: Iterable[tuple[int, int]], *, owner: str, lease: timedelta
) -> tuple[set[tuple[int, int]], datetime]:
    """Extend the leases of the deliveries ``tokens`` still hold; returns those and the new end."""
    deadline = utcnow() + lease
    renewed: set[tuple[int, int]] = set()
    pending = list(tokens)
    for start in range(0, len(pending), _RENEW_CHUNK):
        rows = await session.execute(
            update(JobRow)
            .where(
                tuple_(JobRow.id, JobRow.attempts).in_(pending[start : start + _RENEW_CHUNK]),
                JobRow.state.in_(ACTIVE),
            )
            .values(state="running", owner=owner, due_at=deadline)
            .returning(JobRow.id, JobRow.attempts)
            .execution_options(synchronize_session=False)
        )
        renewed.update((row.id, row.attempts) for row in rows)
    return renewed, deadline


def _held(delivery: Delivery) -> Any:
    return (
        (JobRow.id == delivery.id)
        & (JobRow.attempts == delivery.attempt)
        & JobRow.state.in_(ACTIVE)
    )


async def ack(delivery: Delivery) -> None:
    """The job is done: delete its row, in the job's own transaction. Raises ``LeaseLost``."""
    gone = await session.scalar(
        delete(JobRow)
        .where(_held(delivery))
        .returning(JobRow.id)
        .execution_options(synchronize_session=False)
    )
    if gone is None:
        raise LeaseLost(f"job {delivery.id}: delivery {delivery.attempt} no longer holds it")


async def reschedule(delivery: Delivery, due_at: datetime, *, error: str | None = None) -> None:
    """Back to ``scheduled`` until ``due_at``: a periodic job's next run (its attempts start
    over), or a failed attempt's retry (``error``). Raises ``LeaseLost``."""
    values: dict[str, Any] = {"state": "scheduled", "due_at": due_at, "owner": None}
    values.update({"attempts": 0, "last_error": None} if error is None else {"last_error": error})
    done = await session.scalar(
        update(JobRow)
        .where(_held(delivery))
        .values(**values)
        .returning(JobRow.id)
        .execution_options(synchronize_session=False)
    )
    if done is None:
        raise LeaseLost(f"job {delivery.id}: delivery {delivery.attempt} no longer holds it")


async def mark_dead(delivery: Delivery, error: str) -> None:
    """The job failed its last attempt. A periodic job's key is freed for its next instance.
    Raises ``LeaseLost``."""
    done = await session.scalar(
        update(JobRow)
        .where(_held(delivery))
        .values(
            state="dead",
            due_at=None,
            owner=None,
            last_error=error,
            ended_at=utcnow(),
            dedupe_key=None,
        )
        .returning(JobRow.id)
        .execution_options(synchronize_session=False)
    )
    if done is None:
        raise LeaseLost(f"job {delivery.id}: delivery {delivery.attempt} no longer holds it")


async def release(owner: str) -> int:
    """Hand back every job ``owner`` still holds (its process is stopping): due at once."""
    released = await session.execute(
        update(JobRow)
        .where(JobRow.owner == owner, JobRow.state.in_(ACTIVE))
        .values(state="scheduled", due_at=utcnow(), owner=None)
        .returning(JobRow.id)
        .execution_options(synchronize_session=False)
    )
    return len(released.all())
