"""``enqueue()``: a row in the unit of work's own transaction, and a kick once it commits.

Where the kick goes depends on where the unit of work runs:

- in a serving process with the ``background`` backend, to its dispatcher; the
  row is reserved for it (``queued``, owned by it, until one lease from now).
  If the dispatcher has no room (``Dispatcher.room()``, less what this unit of
  work has reserved already), the row is ``scheduled``, due at once, for any
  process's sweeper;
- with ``celery``, to the broker (the row is reserved for the worker that
  receives the message; from a serving process the send is a background task,
  so the response does not wait for the broker);
- with ``eager`` (tests), the job is claimed and run at once, in the committing
  task, with every retry it needs;
- anywhere else (a ``service`` command with the ``background`` backend), nowhere:
  the row is ``scheduled``, due at once, and a serving process's sweeper takes it.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from quart import current_app, has_app_context

from service.db import (
    Bind,
    UnitOfWorkError,
    current_unit_of_work,
    events,
    on_commit,
    session,
    unit_of_work,
)
from service.jobs import _events, _outbox
from service.jobs._celery import QUEUE, sender_for
from service.jobs._deliver import deliver_inline
from service.jobs._outbox import Delivery, JobRow
from service.jobs._quart import backend_of, lease_of, serving_state
from service.jobs._registry import Body, job_name, registry

__all__ = ["EAGER_OWNER", "config", "drain", "enqueue"]

EAGER_OWNER = "eager"
_RESERVED = "service.jobs.reserved"
_DRAIN_LEASE = timedelta(minutes=5)

_OUTSIDE = (
    "enqueue() writes the job into the current unit of work's transaction, and there is none "
    "in this task. A request has one; elsewhere (a script, a job, a test) call it inside "
    "`async with unit_of_work(): ...`, so that the job exists exactly when your data commits."
)

Kick = Callable[[JobRow, Bind | None], Awaitable[None] | None]


def config() -> Mapping[str, Any]:
    """The current app's configuration, else the environment (the same names: ``JOBS_*``,
    ``CELERY_BROKER_URL``, ``CELERY_QUEUE``)."""
    return current_app.config if has_app_context() else os.environ


@dataclass(frozen=True)
class _Route:
    """How a job enqueued here is written, and what happens once it has committed."""

    kick: Kick | None
    lease: timedelta
    owner: str | None = None
    wake: Callable[[], None] | None = None
    """Told once the unit has committed, when the job is not kicked (a sweeper to look)."""


def enqueue(body: Body, *args: Any) -> None:
    """Enqueue ``body(*args)`` in the current unit of work: it exists, and then runs (at least
    once), exactly when the unit of work commits. The arguments must be JSON-serializable."""
    name = job_name(body)
    if name not in registry:
        raise LookupError(f"{name} is not a job: decorate it with @job()")
    unit = current_unit_of_work()
    if unit is None:
        raise UnitOfWorkError(_OUTSIDE)
    try:
        json.dumps(args)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name}: a job's arguments must be JSON-serializable ({error})") from None
    headers: dict[str, str] = {}
    if _events.job_enqueued:
        _events.job_enqueued.send(_events.JobEnqueued(name, headers))
    route = _route(unit.bind)
    now = _outbox.utcnow()
    if route.kick is None:
        row = JobRow(name=name, args=list(args), state="scheduled", attempts=0, due_at=now)
    else:
        row = JobRow(
            name=name,
            args=list(args),
            state="queued",
            attempts=1,
            due_at=now + route.lease,
            owner=route.owner,
            queued_at=now,
        )
    row.created_at = now
    row.headers = headers or None
    session.add(row)
    if route.kick is not None:
        on_commit(functools.partial(route.kick, row, unit.bind))
    elif route.wake is not None:
        on_commit(route.wake)


def _route(bind: Bind | None) -> _Route:
    state = serving_state() if has_app_context() else None
    settings = config()
    backend = state.backend if state is not None else backend_of(settings)
    lease = lease_of(settings)
    if backend == "eager":
        return _Route(_run_eagerly, lease)
    if backend == "celery":
        sender = sender_for(settings["CELERY_BROKER_URL"], settings.get("CELERY_QUEUE", QUEUE))
        if state is not None:
            spawn = current_app.add_background_task
            return _Route(lambda row, _: spawn(sender.send, [_queued(row)]), lease)
        return _Route(lambda row, _: sender.send([_queued(row)]), lease)
    dispatcher = state.dispatcher if state is not None else None
    if (
        dispatcher is None
        or dispatcher.stopping.is_set()
        or (bind is not None and bind is not dispatcher.bind)
    ):
        return _Route(None, lease)  # no dispatcher here: the sweepers' to deliver
    reserved: int = session.info.get(_RESERVED, 0)  # in this unit of work, not kicked yet
    if dispatcher.room() - reserved <= 0:
        return _Route(None, lease, wake=dispatcher.sweep_soon)  # for whoever has room
    session.info[_RESERVED] = reserved + 1
    return _Route(lambda row, _: dispatcher.kick(_queued(row)), dispatcher.lease, dispatcher.owner)


def _queued(row: JobRow) -> Delivery:
    assert row.due_at is not None
    return Delivery(row.id, row.attempts, row.name, tuple(row.args), row.due_at)


async def _run_eagerly(row: JobRow, bind: Bind | None) -> None:
    with events.running_as("dispatcher"):
        delivery = await unit_of_work(bind=bind)(_outbox.claim)(
            row.id, row.attempts, owner=EAGER_OWNER, lease=_DRAIN_LEASE
        )
    if delivery is not None:
        await deliver_inline(delivery, bind=bind, owner=EAGER_OWNER)


async def drain(*, bind: Bind | None = None) -> int:
    """Deliver, now and in this task, every job in the outbox that is not dead, each with all
    the retries it needs (their backoff skipped), until none is left; for tests and scripts.

    Periodic jobs run only if they are due. Returns the number of jobs delivered.
    """
    delivered = 0
    while True:
        taken = await unit_of_work(bind=bind)(_outbox.take)(
            limit=100, owner=EAGER_OWNER, lease=_DRAIN_LEASE, not_due=True
        )
        if not taken:
            return delivered
        for delivery in taken:
            await deliver_inline(delivery, bind=bind, owner=EAGER_OWNER)
        delivered += len(taken)
