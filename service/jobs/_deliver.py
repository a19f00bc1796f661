"""One delivery of a job: its body and its acknowledgement in one unit of work.

The body's writes and the deletion of the job's row commit together, so a job
that committed is never delivered again, and a delivery that lost its lease to
another (``LeaseLost``) commits nothing. A failed attempt is recorded in a unit
of work of its own: scheduled again after a backoff, or, after the last one,
dead, with the job's ``on_failure`` run in that same unit.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from datetime import timedelta
from typing import Literal

from service.db import Bind, events, reading_after, unit_of_work
from service.jobs import _admin, _events, _outbox
from service.jobs._events import Delivered, JobEnded, JobStarted
from service.jobs._outbox import Delivery, LeaseLost
from service.jobs._registry import Job, registry

__all__ = ["JobLost", "Outcome", "UnknownJob", "deliver", "deliver_inline"]

logger = logging.getLogger("service.jobs")

Outcome = Literal["done", "retry", "dead", "lost"]
"""``done``, ``retry`` (scheduled again), ``dead``, or ``lost`` (another delivery has it)."""

_MAX_ERROR = 8_000


class JobLost(Exception):
    """The job's process went away (crash, kill, lease not renewed) during its last attempt."""


class UnknownJob(LookupError):
    """No process can run the job: its name is not registered (``service/modules.py``)."""


def _describe(error: BaseException) -> str:
    text = "".join(traceback.format_exception(error)).strip()
    return text if len(text) <= _MAX_ERROR else "…" + text[-_MAX_ERROR:]


async def deliver(delivery: Delivery, *, bind: Bind | None = None) -> Outcome:
    """Run ``delivery``: the body, then the acknowledgement, committed together.

    Its units of work are the entry point ``job``; ``job_started`` and ``job_ended``
    (``events``) are sent around it.
    """
    task = asyncio.current_task()
    if _events.job_started:
        started_event = JobStarted(
            delivery.id, delivery.attempt, delivery.name, delivery.headers, task
        )
        _events.job_started.send(started_event)
    started = time.perf_counter()
    outcome: Delivered = "cancelled"
    error: BaseException | None = None
    try:
        with events.running_as("job"):
            outcome, error = await _deliver(delivery, bind)
        return outcome
    finally:
        if _events.job_ended:
            seconds = time.perf_counter() - started
            ended = JobEnded(
                delivery.id, delivery.attempt, delivery.name, outcome, seconds, error, task
            )
            _events.job_ended.send(ended)


async def _deliver(delivery: Delivery, bind: Bind | None) -> tuple[Outcome, Exception | None]:
    job = registry.get(delivery.name)
    if job is None:
        unknown = UnknownJob(f"{delivery.name} is not a registered job in this process")
        unknown_job = Job(delivery.name, _unknown)
        return await _record(unknown_job, delivery, unknown, bind=bind, final=True), unknown
    if delivery.attempt > job.attempts:
        # Only a lost delivery is taken again past the limit: a failed one is dead at it.
        lost = JobLost(f"its process was lost during attempt {delivery.attempt - 1}")
        return await _record(job, delivery, lost, bind=bind, final=True), lost
    try:
        # Read-only units of the body, if any, read what the job's enqueuer wrote.
        with reading_after(delivery.position):
            await unit_of_work(bind=bind, retries=job.retries)(_body_then_ack)(job, delivery)
    except LeaseLost:
        logger.warning("job %s (%s): another delivery took it over", delivery.id, job.name)
        return "lost", None
    except Exception as error:
        logger.exception(
            "job %s %s%r failed (attempt %d of %d)",
            delivery.id,
            job.name,
            delivery.args,
            delivery.attempt,
            job.attempts,
        )
        final = delivery.attempt >= job.attempts
        return await _record(job, delivery, error, bind=bind, final=final), error
    return "done", None


async def deliver_inline(delivery: Delivery, *, bind: Bind | None = None, owner: str) -> Outcome:
    """``deliver``, then at once every retry it needs, backoffs skipped (the eager backend)."""
    while True:
        outcome = await deliver(delivery, bind=bind)
        if outcome != "retry":
            return outcome
        taken = await unit_of_work(bind=bind)(_outbox.take)(
            limit=1,
            owner=owner,
            lease=timedelta(minutes=5),
            ids=[delivery.id],
        )
        if not taken:
            return "lost"
        delivery = taken[0]


async def _body_then_ack(job: Job, delivery: Delivery) -> None:
    await job.body(*delivery.args)
    if job.every is not None:
        await _outbox.reschedule(delivery, _outbox.utcnow() + job.every)
    else:
        await _outbox.ack(delivery)


async def _record(
    job: Job, delivery: Delivery, error: Exception, *, bind: Bind | None, final: bool
) -> Outcome:
    """The attempt failed: schedule the next one, or end the job dead and run ``on_failure``."""
    try:
        if not final:
            retry_at = _outbox.utcnow() + job.retry_delay(delivery.attempt)
            await unit_of_work(bind=bind, retries=job.retries)(_outbox.reschedule)(
                delivery, retry_at, error=_describe(error)
            )
            return "retry"
        try:
            await unit_of_work(bind=bind, retries=job.retries)(_dead)(job, delivery, error)
        except LeaseLost:
            raise
        except Exception as handler_error:
            # Dead all the same; without its handler's writes, and saying why.
            logger.exception("job %s (%s): on_failure failed", delivery.id, job.name)
            described = f"{_describe(error)}\n\non_failure failed:\n{_describe(handler_error)}"
            await unit_of_work(bind=bind, retries=job.retries)(_dead_only)(job, delivery, described)
        logger.error("job %s (%s) is dead after %d attempts", delivery.id, job.name, job.attempts)
        return "dead"
    except LeaseLost:
        logger.warning("job %s (%s): another delivery took it over", delivery.id, job.name)
        return "lost"


async def _dead(job: Job, delivery: Delivery, error: Exception) -> None:
    await _dead_only(job, delivery, _describe(error))
    if job.on_failure is not None:
        await job.on_failure(*delivery.args, error=error)


async def _dead_only(job: Job, delivery: Delivery, described: str) -> None:
    await _outbox.mark_dead(delivery, described)
    if job.every is not None:
        await _admin.ensure_periodic([job.name], _outbox.utcnow() + job.every)


async def _unknown(*args: object) -> None:
    raise AssertionError("never run")
