"""A primary and a streaming replica of the tests' own, and Redis for the callers' positions.

The cluster is private (``reliability.postgres``: ``initdb`` into a temporary
directory, ``pg_basebackup -R`` for the replica, free ports), made once per test
session by the first test that asks for it. Replay is paused and resumed, and the
replica killed and restarted, by the tests; the fixture leaves it replaying.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from reliability.postgres import PrivateCluster, find_postgres_bin

CAUSAL_REDIS_URL = os.environ.get("TEST_CAUSAL_REDIS_URL", "redis://127.0.0.1:6379/13")
DATABASE = "replicated"


@dataclass
class Replication:
    """A primary, its replica, and the ``DATABASE_*`` settings of an app that uses both."""

    primary: PrivateCluster
    replica: PrivateCluster

    @property
    def primary_url(self) -> str:
        return self.primary.url(DATABASE)

    @property
    def replica_url(self) -> str:
        return self.replica.url(DATABASE)

    def config(self, **extra: Any) -> dict[str, Any]:
        return {
            "DATABASE_URL": self.primary_url,
            "DATABASE_REPLICA_URLS": self.replica_url,
            "DATABASE_CAUSAL_REDIS_URL": CAUSAL_REDIS_URL,
            "DATABASE_REPLICA_POLL_INTERVAL": 0.05,
            "DATABASE_PGBOUNCER": False,  # the private cluster is reached directly, in any run
            **extra,
        }

    def position(self, cluster: PrivateCluster) -> int:
        query = (
            "SELECT pg_current_wal_flush_lsn() - '0/0'"
            if cluster is self.primary
            else "SELECT pg_last_wal_replay_lsn() - '0/0'"
        )
        return int(cluster.sql(query))

    def wait_replayed(self, timeout: float = 10.0) -> None:
        """Until the replica has replayed everything the primary had when this was called."""
        target = self.position(self.primary)
        deadline = time.monotonic() + timeout
        while self.position(self.replica) < target:
            if time.monotonic() > deadline:
                raise AssertionError("the replica did not catch up")
            time.sleep(0.02)

    def restart_replica(self) -> None:
        """Start the replica again after ``kill()``: crash recovery, then streaming.

        The killed postmaster's children exit when they notice it is gone; until
        then its shared memory is in use, and a start fails: try again.
        """
        for attempt in range(50):
            try:
                self.replica.start()
                return
            except RuntimeError:
                if attempt == 49:
                    raise
                time.sleep(0.2)

    def heal(self) -> None:
        """Replaying, and running: as each test expects to find it."""
        if not self.replica.running() or not _answers(self.replica):
            self.restart_replica()
        if self.replica.sql("SELECT pg_is_wal_replay_paused()") == "t":
            self.replica.resume_replay()
        self.wait_replayed()


def _answers(cluster: PrivateCluster) -> bool:
    try:
        cluster.sql("SELECT 1")
    except RuntimeError:
        return False
    return True


@pytest.fixture(scope="session")
def _replication(service_database_url: str) -> Iterator[Replication]:
    if not service_database_url.startswith("postgresql"):
        pytest.skip("replicas are PostgreSQL's: the PostgreSQL run has these tests")
    bin_dir = find_postgres_bin()
    if bin_dir is None or not (bin_dir / "pg_basebackup").exists():
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL's server binaries were not found (set POSTGRES_BIN)")
        pytest.skip("PostgreSQL's server binaries were not found (set POSTGRES_BIN)")
    primary = PrivateCluster(bin_dir)
    replica: PrivateCluster | None = None
    try:
        primary.create()
        primary.start()
        primary.sql(f'CREATE DATABASE "{DATABASE}"')
        replica = PrivateCluster.replica_of(primary)
        replica.start()
        yield Replication(primary, replica)
    finally:
        if replica is not None:
            replica.destroy()
        primary.destroy()


@pytest.fixture
async def replication(_replication: Replication) -> AsyncIterator[Replication]:
    """The session's primary and replica, replaying; Redis reachable (else skipped)."""
    redis = Redis.from_url(CAUSAL_REDIS_URL, socket_connect_timeout=1)
    try:
        await redis.ping()
    except OSError as error:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis at {CAUSAL_REDIS_URL} is unreachable: {error}")
        pytest.skip(f"Redis at {CAUSAL_REDIS_URL} is unreachable: {error}")
    finally:
        await redis.aclose()
    await asyncio.to_thread(_replication.heal)
    try:
        yield _replication
    finally:
        await asyncio.to_thread(_replication.heal)


@pytest.fixture
async def primary_engine(replication: Replication) -> AsyncIterator[AsyncEngine]:
    """A plain engine on the primary: writes the apps under test know nothing of."""
    engine = create_async_engine(replication.primary_url, isolation_level="AUTOCOMMIT")
    yield engine
    await engine.dispose()


async def create_tables(engine: AsyncEngine, *tables: Any) -> None:
    async with engine.begin() as connection:
        for table in tables:
            await connection.run_sync(table.drop, checkfirst=True)
            await connection.run_sync(table.create)


async def scalar(engine: AsyncEngine, statement: str) -> Any:
    async with engine.connect() as connection:
        return await connection.scalar(text(statement))
