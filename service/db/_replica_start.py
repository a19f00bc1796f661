"""Replicas started and stopped: the poller and the causal store, from an app's configuration.

See ``_causal`` for what they are for, and ``_replicas`` for the poller.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncEngine

from service.db._causal import register, unregister
from service.db._engine import make_engine
from service.db._replicas import Replica, ReplicaSet, replica_name, replica_urls, setting

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["CausalStore", "start_replicas", "stop_replicas"]

# Redis keeps the highest position it was given, and its TTL from the latest write.
_RECORD = """
local current = redis.call('GET', KEYS[1])
if current and current >= ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return current
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return ARGV[1]
"""


class CausalStore:
    """Positions per caller in Redis: fixed-width hex, so that Redis compares them as text."""

    def __init__(self, redis: Redis, *, ttl: float, prefix: str = "service.db.position:") -> None:
        self.redis = redis
        self.ttl_ms = int(ttl * 1000)
        self.prefix = prefix
        self._record = redis.register_script(_RECORD)

    async def get(self, key: str) -> int | None:
        stored = await self.redis.get(self.prefix + key)
        return None if stored is None else int(stored, 16)

    async def record(self, key: str, position: int) -> None:
        await self._record(keys=[self.prefix + key], args=[f"{position:016x}", self.ttl_ms])

    async def close(self) -> None:
        await self.redis.aclose()


async def start_replicas(
    config: Mapping[str, Any], primary: AsyncEngine, engine_options: Mapping[str, Any]
) -> ReplicaSet | None:
    """The replicas ``config`` names for ``primary`` (``DATABASE_REPLICA_URLS``), polled and
    routed to from now on; ``None`` if it names none."""
    urls = replica_urls(config)
    if not urls:
        return None
    if primary.dialect.name != "postgresql":
        raise ValueError("DATABASE_REPLICA_URLS needs a PostgreSQL DATABASE_URL")
    redis_url = config.get("DATABASE_CAUSAL_REDIS_URL")
    if not redis_url:
        raise ValueError(
            "DATABASE_REPLICA_URLS needs DATABASE_CAUSAL_REDIS_URL (redis://host:port/db): "
            "the positions of callers' writes are kept there, so that their next reads, on "
            "any worker or host, see them."
        )
    max_lag = setting(config, "DATABASE_REPLICA_MAX_LAG")
    poll_interval = setting(config, "DATABASE_REPLICA_POLL_INTERVAL")
    ttl = float(config.get("DATABASE_CAUSAL_TTL") or 30.0)
    if ttl <= max_lag + 2 * max(1.0, 10 * poll_interval):
        raise ValueError(
            f"DATABASE_CAUSAL_TTL ({ttl}s) must outlast DATABASE_REPLICA_MAX_LAG ({max_lag}s) "
            "and the poller's staleness: a caller's position may expire only once every "
            "replica in rotation has replayed it."
        )
    from redis.asyncio import Redis  # only with replicas: the layer imports no Redis otherwise

    redis = Redis.from_url(str(redis_url), socket_timeout=1.0, socket_connect_timeout=1.0)
    replicas = ReplicaSet(
        primary,
        [Replica(replica_name(url), make_engine(url, **engine_options)) for url in urls],
        store=CausalStore(redis, ttl=ttl),
        max_lag=max_lag,
        poll_interval=poll_interval,
        log_interval=setting(config, "DATABASE_REPLICA_LOG_INTERVAL"),
    )
    register(replicas)
    await replicas.start()
    return replicas


async def stop_replicas(replicas: ReplicaSet) -> None:
    unregister(replicas)
    await replicas.stop()
