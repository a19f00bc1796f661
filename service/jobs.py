"""Background jobs: enqueued when the unit of work commits, each run as a unit of work of its own.

    @job(on_failure=mark_failed)
    async def compute_statement(statement_id: int) -> None: ...

    enqueue(compute_statement, statement.id)  # in a handler, or any unit of work

``enqueue`` hands the job over from an on-commit callback: a unit of work that
rolls back enqueues nothing, and a job never starts before the rows it reads
are committed. The job's body then runs in a unit of work of its own (never
the enqueuer's session), run again on serialization failures and deadlocks. If
it fails, its ``on_failure`` runs in another unit of work, so that it can record
the failure while the body's partial writes are rolled back.

Where jobs run is the app's ``JOBS_BACKEND`` (``service.config``):

- ``background`` (the default without a broker): tasks of the serving process
  (Quart background tasks), awaited when it shuts down;
- ``celery`` (the default with ``CELERY_BROKER_URL``): sent to ``service worker``;
- ``eager``: run at once in the committing task, after the commit (tests).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from quart import current_app, has_app_context

from service.config import Settings
from service.db import on_commit, unit_of_work
from service.db._session import Bind, current_unit_of_work

__all__ = ["Job", "enqueue", "execute", "job", "registry"]

logger = logging.getLogger(__name__)

Body = Callable[..., Awaitable[None]]
FailureHandler = Callable[..., Awaitable[None]]
B = TypeVar("B", bound=Body)


@dataclass(frozen=True)
class Job:
    name: str
    body: Body
    on_failure: FailureHandler | None = None
    """Called with the job's arguments and ``error=``, in a unit of work of its own."""
    retries: int = 3


registry: dict[str, Job] = {}
"""Every job, by name (``module.function``): what a worker can run."""


def job(*, on_failure: FailureHandler | None = None, retries: int = 3) -> Callable[[B], B]:
    """Register an async function as a job. Its arguments must be JSON-serializable."""

    def register(body: B) -> B:
        name = f"{body.__module__}.{body.__qualname__}"
        registry[name] = Job(name, body, on_failure, retries)
        return body

    return register


def enqueue(body: Body, *args: Any) -> None:
    """Run the job ``body(*args)`` once the current unit of work has committed."""
    name = f"{body.__module__}.{body.__qualname__}"
    if name not in registry:
        raise LookupError(f"{name} is not a job: decorate it with @job()")
    unit = current_unit_of_work()
    bind = unit.bind if unit is not None else None  # the job uses the enqueuer's database
    on_commit(functools.partial(_submit, _backend(), registry[name], args, bind))


async def execute(job: Job, args: tuple[Any, ...], *, bind: Bind | None = None) -> None:
    """Run ``job`` as a unit of work; if it fails, its ``on_failure`` in another; re-raise."""
    try:
        await unit_of_work(bind=bind, retries=job.retries)(job.body)(*args)
    except Exception as error:
        if job.on_failure is not None:
            await unit_of_work(bind=bind, retries=job.retries)(job.on_failure)(*args, error=error)
        raise


def _config() -> Any:
    return current_app.config if has_app_context() else Settings().to_app_config()


def _backend() -> str:
    config = _config()
    backend: str | None = config.get("JOBS_BACKEND")
    return backend or ("celery" if config.get("CELERY_BROKER_URL") else "background")


async def _submit(backend: str, job: Job, args: tuple[Any, ...], bind: Bind | None) -> None:
    if backend == "eager":
        await _logged(job, args, bind)
    elif backend == "background":
        if not has_app_context():
            raise RuntimeError("background jobs run in a serving app; outside one use celery")
        current_app.add_background_task(_logged, job, args, bind)
    elif backend == "celery":
        from service.worker import celery_for

        config = _config()
        celery = celery_for(config["CELERY_BROKER_URL"], config["CELERY_QUEUE"])
        # Sending talks to the broker: in a thread, not on the event loop.
        await asyncio.to_thread(celery.send_task, job.name, args=list(args))
    else:
        raise ValueError(f"unknown JOBS_BACKEND {backend!r}")


async def _logged(job: Job, args: tuple[Any, ...], bind: Bind | None) -> None:
    try:
        await execute(job, args, bind=bind)
    except Exception:
        logger.exception("job %s%r failed", job.name, args)
