"""Configuration from environment variables."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
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
    """Where jobs run: ``celery`` if a broker is configured, else ``background`` (the serving
    process's own dispatcher, awaited at shutdown). ``eager`` runs them at once, after the
    commit, in the committing task (tests)."""

    jobs_concurrency: int = Field(default=4, ge=1)
    """Jobs one serving process runs at a time (``background``)."""

    jobs_lease: float = Field(default=3.0, gt=0)
    """Seconds a delivery holds its job unless renewed (it is, while it runs): after a crash,
    a job is delivered again within this, plus the sweep interval, of a restart."""

    jobs_sweep_interval: float = Field(default=1.0, gt=0)
    """Seconds between two looks of a serving process's sweeper for jobs due (again)."""

    jobs_keep_dead_days: float = Field(default=30.0, gt=0)
    """Days a dead job is kept, for ``service jobs list`` and ``retry``; then it is pruned."""

    database_connect_timeout: float = 5.0
    """Seconds to open a database connection before the request answers 503 (PostgreSQL)."""

    database_command_timeout: float = 30.0
    """Seconds one statement may take before the request answers 503 (PostgreSQL)."""

    database_pool_timeout: float = 10.0
    """Seconds a request waits for a pooled connection before it answers 503."""

    def engine_options(self) -> dict[str, float]:
        """The timeouts as ``make_engine()`` takes them, for engines made outside the app."""
        return {
            "connect_timeout": self.database_connect_timeout,
            "command_timeout": self.database_command_timeout,
            "pool_timeout": self.database_pool_timeout,
        }

    def to_app_config(self) -> dict[str, object]:
        return {name.upper(): value for name, value in self.model_dump().items()}
