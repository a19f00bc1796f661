"""The Quart binding: each serving process runs a dispatcher for the outbox.

``Jobs(db, app)`` or ``jobs = Jobs(db); jobs.init_app(app)``, after the app's
``Database``. When serving starts, the process's dispatcher starts its loops as
Quart background tasks, so that Quart awaits the jobs they run at shutdown (for
``BACKGROUND_TASK_SHUTDOWN_TIMEOUT``, then cancels them: they roll back). Once
they have ended, the jobs this process still holds are handed back, due at once,
before the Database disposes of the engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from quart import Quart, current_app

from service.db.quart import Database
from service.jobs._celery import QUEUE, sender_for
from service.jobs._dispatcher import Dispatcher

__all__ = ["Jobs", "backend_of", "serving_state"]

_EXTENSION = "service.jobs"
_DATABASE_EXTENSION = "service.db"
BACKENDS = ("background", "celery", "eager")


def backend_of(config: Mapping[str, Any]) -> str:
    """``JOBS_BACKEND``, else ``celery`` with a broker, else ``background``."""
    backend: str | None = config.get("JOBS_BACKEND")
    backend = backend or ("celery" if config.get("CELERY_BROKER_URL") else "background")
    if backend not in BACKENDS:
        raise ValueError(f"unknown JOBS_BACKEND {backend!r}: one of {', '.join(BACKENDS)}")
    return backend


def lease_of(config: Mapping[str, Any]) -> timedelta:
    return timedelta(seconds=float(config.get("JOBS_LEASE", 3.0)))


@dataclass
class _State:
    backend: str
    dispatcher: Dispatcher | None = None


class Jobs:
    """Delivers the outbox's jobs from the app's serving processes (see the module)."""

    def __init__(self, database: Database, app: Quart | None = None) -> None:
        self.database = database
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Quart) -> None:
        if _EXTENSION in app.extensions:
            raise RuntimeError("Jobs are already registered on this app; call init_app once.")
        if _DATABASE_EXTENSION not in app.extensions:
            raise RuntimeError("Register the app's Database first: Jobs use its engine.")
        app.extensions[_EXTENSION] = _State(backend_of(app.config))
        app.before_serving(self._start)
        # First of the after_serving functions: before the Database disposes of the engine.
        app.after_serving_funcs.insert(0, self._stop)

    async def _start(self) -> None:
        app: Quart = current_app._get_current_object()  # type: ignore[attr-defined]
        state: _State = app.extensions[_EXTENSION]
        state.backend = backend_of(app.config)
        if state.backend == "eager":
            return
        config = app.config
        relay = None
        if state.backend == "celery":
            relay = sender_for(config["CELERY_BROKER_URL"], config.get("CELERY_QUEUE", QUEUE)).send
        stopping = app.shutdown_event  # set as Quart's shutdown begins, before it awaits tasks
        assert isinstance(stopping, asyncio.Event), "Quart's event_class is asyncio.Event"
        dispatcher = Dispatcher(
            bind=self.database.engine,
            spawn=app.add_background_task,
            stopping=stopping,
            lease=lease_of(config),
            sweep_interval=float(config.get("JOBS_SWEEP_INTERVAL", 1.0)),
            concurrency=int(config.get("JOBS_CONCURRENCY", 4)),
            relay=relay,
        )
        state.dispatcher = dispatcher
        app.add_background_task(dispatcher.sweeper)
        if relay is None:
            app.add_background_task(dispatcher.renewals)

    async def _stop(self) -> None:
        state: _State = current_app.extensions[_EXTENSION]
        dispatcher, state.dispatcher = state.dispatcher, None
        if dispatcher is not None:
            await dispatcher.release()


def serving_state() -> _State | None:
    """The current app's jobs state, if it has ``Jobs``."""
    state: _State | None = current_app.extensions.get(_EXTENSION)
    return state
