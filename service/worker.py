"""The Celery worker: ``service worker`` (``celery -A service.worker worker``).

The broker carries only which job to run: one task, ``service.jobs.deliver``,
with a job's id and the number of its delivery. The worker claims that delivery
in the outbox, runs the job's async body as a unit of work on the worker
process's own event loop, with the process's own engine, and acknowledges it in
that same unit, inside the task's call (Celery's post-run hooks would be too
late to change anything). The jobs themselves are found through the registry
(``service.jobs``), filled by ``service.modules``. Forked worker processes start
with an engine of their own and leave their parent's pooled connections alone.
"""

from __future__ import annotations

import asyncio
import functools
import os
from datetime import timedelta
from typing import Any

from celery import Celery
from celery.signals import worker_process_init, worker_process_shutdown
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy.ext.asyncio import AsyncEngine

from service import jobs, metrics, modules, tracing
from service.config import Settings
from service.db import make_engine
from service.metrics_files import multiprocess_directory

__all__ = ["celery_app", "celery_for", "deliver", "serve_metrics"]

modules.load()  # every job (service/modules.py), run by name from the registry


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
            tracing.instrument_engine(cls.engine)  # if traces are on (OTEL_*)
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


def serve_metrics(host: str, port: int) -> None:
    """``service worker --metrics-port``: ``GET /metrics`` on ``host:port``, summing the
    worker processes' figures (deliveries, units of work, pool); the outbox's gauges are in
    the web workers' scrape. Called in the main process, before Celery forks its pool."""
    directory = multiprocess_directory(owner=os.getpid())
    assert directory is not None
    metrics.metrics()  # listening before the fork: each child counts in files of its own
    registry = CollectorRegistry()
    MultiProcessCollector(registry, str(directory))  # type: ignore[no-untyped-call]
    start_http_server(port, host, registry=registry)
    worker_process_shutdown.connect(_stopped, weak=False)


def _stopped(**_: Any) -> None:
    metrics.metrics().process_stopped()  # its gauges leave the sums


def deliver(job_id: int, attempt: int) -> str | None:
    """Delivery number ``attempt`` of job ``job_id``: claimed in the outbox, run as a unit of
    work with its acknowledgement, on this process's own loop and engine.

    Returns the outcome (``done``, ``retry``, ``dead``, ``lost``), or ``None`` for a message
    whose delivery is no longer queued. The job's failures are recorded in the outbox, not
    in Celery: the task fails only if the database cannot be reached to record anything,
    and then the job's lease runs out and a sweeper delivers it again.
    """
    loop, engine = _Process.runtime()
    lease = timedelta(seconds=Settings().jobs_lease)
    return loop.run_until_complete(jobs.run_delivered(job_id, attempt, bind=engine, lease=lease))


@functools.cache
def celery_for(broker_url: str, queue: str) -> Celery:
    """A Celery app on ``broker_url`` with the one task that delivers the outbox's jobs."""
    celery = Celery("service", broker=broker_url, set_as_current=False)
    celery.conf.update(
        task_default_queue=queue,
        task_ignore_result=True,  # the outcome is in the outbox and in the job's own rows
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    celery.task(name=jobs.DELIVER_TASK)(deliver)
    return celery


def _from_settings() -> Celery:
    settings = Settings()
    return celery_for(
        settings.celery_broker_url or "redis://127.0.0.1:6379/0", settings.celery_queue
    )


celery_app = _from_settings()
