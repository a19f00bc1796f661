"""The outbox's periodic jobs, and its care: listing, retrying and pruning jobs.

Every function here runs in the current unit of work.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite

from service.db import session
from service.jobs._outbox import JobRow, utcnow

__all__ = ["ensure_periodic", "list_jobs", "missing_periodic", "prune_dead", "retry"]


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
