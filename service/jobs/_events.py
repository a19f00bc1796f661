"""What the jobs do, published as typed events (``service.db.events.Signal``).

    from service.jobs import events

    @events.job_ended.connect
    def count(event: events.JobEnded) -> None:
        print(event.name, event.outcome, event.seconds)

As with the layer's own events, a listener runs at once, in the task where the
event happens, must be quick, and cannot fail what it observes.

- ``job_enqueued``: ``enqueue()`` is writing a job. Its ``headers`` are stored with
  the job in the outbox, and come back with each of its deliveries, in whatever
  process: a listener may add to them (a tracing listener puts the trace context
  there, so that the job's span joins the enqueuing request's trace).
- ``job_started`` / ``job_ended``: one delivery of a job, from before its unit of
  work begins to after its outcome is recorded, in the delivering task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from service.db import events

__all__ = [
    "Delivered",
    "JobEnded",
    "JobEnqueued",
    "JobStarted",
    "job_ended",
    "job_enqueued",
    "job_started",
]

Delivered = Literal["done", "retry", "dead", "lost", "cancelled"]
"""How a delivery ended: the job is done; it failed and is scheduled again; it failed its
last attempt and is dead; another delivery had taken it over; or it was cancelled (the
process is stopping, or its lease could not be renewed): it is delivered again."""


@dataclass(frozen=True, slots=True)
class JobEnqueued:
    """A job is being written into the outbox; listeners may add ``headers`` to it."""

    name: str
    headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class JobStarted:
    """Delivery number ``attempt`` of job ``id`` starts, in ``task``."""

    id: int
    attempt: int
    name: str
    headers: Mapping[str, str]
    task: asyncio.Task[object] | None


@dataclass(frozen=True, slots=True)
class JobEnded:
    """Delivery number ``attempt`` of job ``id`` ended after ``seconds``."""

    id: int
    attempt: int
    name: str
    outcome: Delivered
    seconds: float
    error: BaseException | None
    """Why the attempt failed (``retry``, ``dead``)."""
    task: asyncio.Task[object] | None


job_enqueued: events.Signal[JobEnqueued] = events.Signal("job_enqueued")
job_started: events.Signal[JobStarted] = events.Signal("job_started")
job_ended: events.Signal[JobEnded] = events.Signal("job_ended")
