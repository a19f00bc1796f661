"""Configuration from environment variables."""

from __future__ import annotations

from typing import Any, Literal

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

    database_pool_size: int = 10
    """Connections each process keeps open (per Hypercorn worker, per Celery worker process)."""

    database_max_overflow: int = 5
    """Connections a process may open beyond the pool under load, closed when returned.

    Each process may hold ``DATABASE_POOL_SIZE + DATABASE_MAX_OVERFLOW`` connections (15):
    keep ``workers x 15`` plus everything else that connects below PostgreSQL's
    ``max_connections`` (100 by default), e.g. at most 5 workers per database server.
    """

    database_pgbouncer: bool = False
    """``true`` when ``DATABASE_URL`` (and the replicas' URLs) go through PgBouncer in transaction
    mode: statements are then prepared unnamed and never cached (docs/replicas.md)."""

    database_replica_urls: str = ""
    """Streaming replicas of the primary, separated by commas or spaces: read-only requests
    (GET, HEAD) read from one that has replayed the caller's last write (docs/replicas.md)."""

    database_replica_max_lag: float = Field(default=10.0, gt=0)
    """Seconds a replica may be behind the primary and stay in the rotation."""

    database_replica_poll_interval: float = Field(default=0.1, gt=0)
    """Seconds between two polls of the replicas' replay positions (and the primary's)."""

    database_replica_log_interval: float = Field(default=60.0, gt=0)
    """Seconds between two log lines of the replica counters (reads, fall-backs, lag)."""

    database_causal_redis_url: str | None = None
    """Where callers' write positions are kept, shared by every worker and host (needed with
    replicas): ``redis://host:port/db``."""

    database_causal_ttl: float = Field(default=30.0, gt=0)
    """Seconds a caller's write position is kept: longer than the replicas' maximum lag."""

    body_timeout: float = 10.0
    """Seconds a request's body may take to arrive before the request answers 408.

    No database work starts before the body is in (see the README's promise), so
    this bounds how long a slow client can hold a worker's attention, never a
    transaction or a pooled connection."""

    body_buffer_limit: int = Field(default=16 * 1024 * 1024, ge=64 * 1024)
    """Bytes of request bodies one process may be receiving at once, a quarter of it for one
    client address (each body counted at its declared length); beyond, a 503 ``server_busy``
    before any of the body is read."""

    http2: bool = False
    """Serve HTTP/2 (cleartext upgrade, prior knowledge, ALPN) as Hypercorn does. Off: Hypercorn
    cannot bound the streams a client opens and resets ("rapid reset"); turn it on only behind
    a proxy that does (``service.serving``)."""

    rate_limit_enabled: bool = True
    """``false`` turns every rate limit off (benchmarks, load tests)."""

    rate_limit_storage_url: str = "memory://"
    """Where the counters live: ``memory://`` (each process its own) or
    ``redis://host:port/db`` (shared by every worker and host using that Redis)."""

    rate_limit_per_user: str = "3000/minute"
    """Requests one user may make, all their tokens together (``limits`` notation:
    ``N/second|minute|hour|day``)."""

    rate_limit_failed_auth: str = "30/minute"
    """Requests with a missing, wrong or expired token one client address may make."""

    rate_limit_registrations: str = "10/hour"
    """Registrations (``POST /users``) one client address may make."""

    hsts_max_age: int = 0
    """Seconds of ``Strict-Transport-Security`` to send; 0 sends none. Set it when the service
    is reached over TLS only (say 31536000, a year)."""

    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    """The port on which ``GET /metrics`` answers (Prometheus); unset, no metrics are kept.
    ``service serve`` binds it on 127.0.0.1 (``--metrics-host``): never the API's port."""

    access_log: bool = True
    """One JSON line per request, and one per movement of money, on standard error."""

    def engine_options(self) -> dict[str, Any]:
        """The engine settings as ``make_engine()`` takes them, for engines made outside the app."""
        return {
            "pgbouncer": self.database_pgbouncer,
            "connect_timeout": self.database_connect_timeout,
            "command_timeout": self.database_command_timeout,
            "pool_timeout": self.database_pool_timeout,
            "pool_size": self.database_pool_size,
            "max_overflow": self.database_max_overflow,
        }

    def to_app_config(self) -> dict[str, object]:
        return {name.upper(): value for name, value in self.model_dump().items()}
