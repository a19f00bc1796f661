"""Configuration from environment variables."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Read from the environment: ``DATABASE_URL`` and friends."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    database_url: str = "sqlite+aiosqlite:///var/service.db"
    """SQLite file by default (created on first run); ``postgresql+asyncpg://...`` to scale out."""

    readiness_timeout: float = 2.0
    """Seconds ``/readyz`` waits for the database before answering 503."""

    database_connect_timeout: float = 5.0
    """Seconds to open a database connection before the request answers 503 (PostgreSQL)."""

    database_command_timeout: float = 30.0
    """Seconds one statement may take before the request answers 503 (PostgreSQL)."""

    database_pool_timeout: float = 10.0
    """Seconds a request waits for a pooled connection before it answers 503."""

    def to_app_config(self) -> dict[str, object]:
        return {name.upper(): value for name, value in self.model_dump().items()}
