"""The outbox's periodic jobs, and its care: listing, retrying and pruning jobs.

Every function here runs in the current unit of work.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, case, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite

from service.db import session
from service.jobs._outbox import JobRow, utcnow

__all__ = [
    "OutboxStats",
    "ensure_periodic",
    "list_jobs",
    "missing_periodic",
    "outbox_stats",
    "prune_dead",
    "retry",
]


async def missing_periodic(names: Sequence[str]) -> list[str]:
    """The periodic jobs among ``names`` that have no instance: a read only."""
    present = set(
        (await session.scalars(select(JobRow.dedupe_key).where(JobRow.dedupe_key.in_(names))))
        .unique()
        .all()
    )
    return [name for name in names if name not in present]


async def ensure_periodic(names: Sequence[str], due_at: datetime) -> list[str]:
    """Schedule an instance of each periodic job in ``names`` that has none; returns the ones
    scheduled. The unique key makes this safe from any number of processes at once: the
    losers' inserts do nothing."""
    if not names:
        return []
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    now = utcnow()
    inserted = await session.scalars(
        dialect.insert(JobRow)
        .values(
            [
                {
                    "name": name,
                    "args": [],
                    "state": "scheduled",
                    "attempts": 0,
                    "due_at": due_at,
                    "dedupe_key": name,
                    "created_at": now,
                }
                for name in names
            ]
        )
        .on_conflict_do_nothing(index_elements=["dedupe_key"])
        .returning(JobRow.name)
    )
    return list(inserted.all())


async def list_jobs(states: Sequence[str], *, limit: int) -> list[JobRow]:
    """Jobs in ``states``, the most recent first."""
    return await (
        JobRow.query.where(JobRow.state.in_(states)).order_by(JobRow.id.desc()).limit(limit).all()
    )


async def retry(job_id: int) -> JobRow | None:
    """Run a dead (or scheduled) job again now, with its attempts starting over."""
    row = await JobRow.query.where(JobRow.id == job_id).with_for_update().first()
    if row is None or row.state not in ("dead", "scheduled"):
        return None
    await row.update(state="scheduled", due_at=utcnow(), attempts=0, owner=None, ended_at=None)
    return row


async def prune_dead(before: datetime) -> int:
    """Delete the dead jobs that died before ``before``."""
    pruned = await session.execute(
        delete(JobRow)
        .where(JobRow.state == "dead", JobRow.ended_at < before)
        .returning(JobRow.id)
        .execution_options(synchronize_session=False)
    )
    return len(pruned.all())


@dataclass(frozen=True)
class OutboxStats:
    """The outbox at one moment: jobs by state, and how long the oldest pending one waits."""

    pending: int
    """Jobs that should be running and are not: handed over (``queued``), or due."""
    waiting: int
    """Jobs scheduled for later: retries waiting out their backoff, periodic jobs."""
    running: int
    dead: int
    oldest_pending_seconds: float
    """Since when the oldest pending job waits: handed over, or due; 0 when none is."""


async def outbox_stats() -> OutboxStats:
    """The outbox's figures (for metrics): one aggregate query, a read only."""
    now = utcnow()
    later = and_(JobRow.state == "scheduled", JobRow.due_at > now)
    since = case((JobRow.state == "queued", JobRow.queued_at), else_=JobRow.due_at)
    rows = await session.execute(
        select(JobRow.state, later.label("later"), func.count(), func.min(since)).group_by(
            JobRow.state, later
        )
    )
    counts = {"pending": 0, "waiting": 0, "running": 0, "dead": 0}
    oldest: datetime | None = None
    for state, is_later, count, first in rows:
        kind = "waiting" if is_later else "pending" if state in ("scheduled", "queued") else state
        counts[kind] = counts.get(kind, 0) + count
        if kind == "pending" and first is not None and (oldest is None or first < oldest):
            oldest = first
    age = max((now - oldest).total_seconds(), 0.0) if oldest is not None else 0.0
    return OutboxStats(counts["pending"], counts["waiting"], counts["running"], counts["dead"], age)
