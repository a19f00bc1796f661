"""Durable jobs through a transactional outbox.

    @job(on_failure=mark_failed)
    async def compute_statement(statement_id: int) -> None: ...

    enqueue(compute_statement, statement.id)  # in a handler, or any unit of work

``enqueue`` writes the job into the ``jobs`` table in the unit of work's own
transaction: a job exists if and only if its unit of work committed, and it runs
at least once. Right after the commit, the job is handed to the backend (the
kick); a sweeper in every serving process delivers again any job not finished
within its lease (crash, lost worker, broker outage). Each delivery runs the body
and deletes the job's row in one unit of work, so the body's writes and the
acknowledgement commit together. A failed attempt is retried with exponential
backoff; after the last one the job is dead, and its ``on_failure`` runs.

Where jobs run is the app's ``JOBS_BACKEND`` (``service.config``):

- ``background`` (the default without a broker): the serving process's own
  dispatcher (``Jobs``), awaited at shutdown;
- ``celery`` (the default with ``CELERY_BROKER_URL``): ``service worker``, the broker
  carrying only which job to run;
- ``eager``: at once, in the committing task, after the commit (tests).

The modules in this package: ``_registry`` (``@job``), ``_outbox`` (the table and
the statements that move a job through it), ``_admin`` (periodic jobs, listing,
retrying, pruning), ``_enqueue``, ``_deliver`` (one delivery), ``_dispatcher``
(the kick, the leases, the sweeper), ``_celery`` and ``_quart`` (the bindings).
"""

from __future__ import annotations

from datetime import timedelta

from service.jobs import _events as events
from service.jobs._admin import OutboxStats, list_jobs, outbox_stats, prune_dead
from service.jobs._admin import retry as retry_job
from service.jobs._celery import DELIVER_TASK, run_delivered
from service.jobs._dispatcher import Dispatcher
from service.jobs._enqueue import config, drain, enqueue
from service.jobs._outbox import JobRow, utcnow
from service.jobs._quart import Jobs
from service.jobs._registry import job, job_name, registry

__all__ = [
    "DELIVER_TASK",
    "Dispatcher",
    "JobRow",
    "Jobs",
    "OutboxStats",
    "drain",
    "enqueue",
    "events",
    "job",
    "job_name",
    "list_jobs",
    "outbox_stats",
    "prune_dead_jobs",
    "registry",
    "retry_job",
    "run_delivered",
]


@job(every=timedelta(hours=1))
async def prune_dead_jobs() -> None:
    """Dead jobs are kept ``JOBS_KEEP_DEAD_DAYS`` (30) days after they died, then deleted."""
    days = float(config().get("JOBS_KEEP_DEAD_DAYS", 30.0))
    await prune_dead(utcnow() - timedelta(days=days))
