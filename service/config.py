"""Configuration from environment variables."""

from __future__ import annotations

from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Read from the environment: ``DATABASE_URL`` and friends."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    database_url: str = "sqlite+aiosqlite:///var/service.db"
    """SQLite file by default (created on first run); ``postgresql+asyncpg://...`` to scale out."""

    readiness_timeout: float = 2.0
    """Seconds ``/readyz`` waits for the database before answering 503."""

    celery_broker_url: str | None = None
    """A Celery broker (``redis://127.0.0.1:6379/0``): jobs then go to ``service worker``."""

    celery_queue: str = "service"
    """The Celery queue the web processes send jobs to and ``service worker`` consumes."""

    jobs_backend: Literal["background", "celery", "eager"] | None = None
    """Where jobs run: ``celery`` if a broker is configured, else ``background`` (tasks of the
    serving process, awaited at shutdown). ``eager`` runs them at once, after the commit (tests)."""

    database_connect_timeout: float = 5.0
    """Seconds to open a database connection before the request answers 503 (PostgreSQL)."""

    database_command_timeout: float = 30.0
    """Seconds one statement may take before the request answers 503 (PostgreSQL)."""

    database_pool_timeout: float = 10.0
    """Seconds a request waits for a pooled connection before it answers 503."""

    database_pool_size: int = 10
    """Connections each process keeps open (per Hypercorn worker, per Celery worker process)."""

    database_max_overflow: int = 5
    """Connections a process may open beyond the pool under load, closed when returned.

    Each process may hold ``DATABASE_POOL_SIZE + DATABASE_MAX_OVERFLOW`` connections (15):
    keep ``workers x 15`` plus everything else that connects below PostgreSQL's
    ``max_connections`` (100 by default), e.g. at most 5 workers per database server.
    """

    body_timeout: float = 10.0
    """Seconds a request's body may take to arrive before the request answers 408.

    No database work starts before the body is in (see the README's promise), so
    this bounds how long a slow client can hold a worker's attention, never a
    transaction or a pooled connection."""

    def engine_options(self) -> dict[str, float]:
        """The engine settings as ``make_engine()`` takes them, for engines made outside the app."""
        return {
            "connect_timeout": self.database_connect_timeout,
            "command_timeout": self.database_command_timeout,
            "pool_timeout": self.database_pool_timeout,
            "pool_size": self.database_pool_size,
            "max_overflow": self.database_max_overflow,
        }

    def to_app_config(self) -> dict[str, object]:
        return {name.upper(): value for name, value in self.model_dump().items()}
