"""The Celery worker: ``service worker`` (``celery -A service.worker worker``).

Every registered job (``service.jobs``) is a task of ``UnitOfWorkTask``, which
runs its async body as a unit of work on the worker process's own event loop,
with the process's own engine. The commit happens inside the task's call, so
a failed commit fails the task; Celery's post-run hooks run only after the
result is recorded, too late to change it. Forked worker processes start with
an engine of their own and leave their parent's pooled connections alone.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from celery import Celery, Task
from celery.signals import worker_process_init, worker_process_shutdown
from sqlalchemy.ext.asyncio import AsyncEngine

from service import jobs, modules
from service.config import Settings
from service.db import make_engine

__all__ = ["UnitOfWorkTask", "celery_app", "celery_for"]

modules.load()  # registers every job (service/modules.py) before the tasks are made


class _Process:
    """This process's event loop and engine, made on first use."""

    loop: asyncio.AbstractEventLoop | None = None
    engine: AsyncEngine | None = None
    inherited: list[object] = []
    """A forked child's copies of its parent's loop and engine, kept but never used."""

    @classmethod
    def runtime(cls) -> tuple[asyncio.AbstractEventLoop, AsyncEngine]:
        if cls.loop is None:
            cls.loop = asyncio.new_event_loop()
        if cls.engine is None:
            settings = Settings()
            cls.engine = make_engine(settings.database_url, **settings.engine_options())
        return cls.loop, cls.engine


@worker_process_init.connect
def _forget_the_parents_connections(**_: Any) -> None:
    # A forked child shares its parent's sockets, and its parent's epoll instance
    # too (the loop's selector). Using the inherited connections would interleave
    # two processes' traffic; letting them be garbage collected is no better: a
    # collected asyncpg connection aborts its transport, which unregisters the
    # socket from that shared epoll instance, and the parent then never hears
    # from its own connection again. So the child keeps its copies of the parent's
    # loop and engine alive, untouched, for as long as it lives (a worker process
    # ends with os._exit, which finalizes nothing), and makes its own.
    if _Process.loop is not None or _Process.engine is not None:
        _Process.inherited.append((_Process.loop, _Process.engine))
    _Process.engine = None
    _Process.loop = None


@worker_process_shutdown.connect
def _dispose(**_: Any) -> None:
    if _Process.loop is not None and _Process.engine is not None:
        _Process.loop.run_until_complete(_Process.engine.dispose())
        _Process.loop.close()
    _Process.engine = _Process.loop = None


class UnitOfWorkTask(Task[Any, Any]):
    """A task whose async body runs as one unit of work, committed before the task returns.

    An exception rolls the body back and fails the task; so does a failed commit.
    Serialization failures and deadlocks re-run the body, and a registered job's
    ``on_failure`` then records the failure in a unit of work of its own. The
    session is always removed.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        loop, engine = _Process.runtime()
        if kwargs:
            raise TypeError("jobs take positional arguments only")
        job = jobs.registry.get(self.name) or jobs.Job(self.name, self.run)
        return loop.run_until_complete(jobs.execute(job, args, bind=engine))


@functools.cache
def celery_for(broker_url: str, queue: str) -> Celery:
    """A Celery app on ``broker_url`` whose tasks are the registered jobs."""
    celery = Celery("service", broker=broker_url, set_as_current=False)
    celery.conf.update(
        task_default_queue=queue,
        task_ignore_result=True,  # the outcome is in the database (a statement's status)
        task_acks_late=True,  # a job lost with its worker is delivered again
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    for job in jobs.registry.values():
        celery.task(name=job.name, base=UnitOfWorkTask)(job.body)
    return celery


def _from_settings() -> Celery:
    settings = Settings()
    return celery_for(
        settings.celery_broker_url or "redis://127.0.0.1:6379/0", settings.celery_queue
    )


celery_app = _from_settings()
