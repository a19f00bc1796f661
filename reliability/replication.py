"""A primary with a streaming replica, and a Redis, all private to the reliability suite.

``replicated()`` makes them on free ports (``reliability.postgres`` for the
clusters, ``redis-server`` without persistence), with one migrated database, and
removes them at the end. Servers of the service started with ``env()`` read from
the replica and keep their callers' positions in the Redis.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from bench.harness import free_port, prepare_database
from reliability.postgres import PrivateCluster

__all__ = ["PrivateRedis", "Replicated", "replica_counters", "replicated"]

DATABASE = "replicated"


class PrivateRedis:
    """``redis-server`` on 127.0.0.1 and a free port, keeping nothing on disk."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="reliability-redis-"))
        self._log: IO[bytes] = (self.root / "redis.log").open("wb")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
            + ["--appendonly", "no", "--dir", str(self.root)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def wait_ready(self, timeout: float = 10.0) -> None:
        import socket

        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as probe:
                    probe.sendall(b"PING\r\n")
                    if probe.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class Replicated:
    primary: PrivateCluster
    replica: PrivateCluster
    redis: PrivateRedis

    @property
    def url(self) -> str:
        return self.primary.url(DATABASE)

    def env(self, **extra: str) -> dict[str, str]:
        """A server's environment: the primary, its replica, the Redis, counters logged often."""
        return {
            "DATABASE_REPLICA_URLS": self.replica.url(DATABASE),
            "DATABASE_CAUSAL_REDIS_URL": self.redis.url(),
            "DATABASE_REPLICA_LOG_INTERVAL": "1",
            "ACCESS_LOG": "false",
            **extra,
        }

    async def pause(self) -> None:
        await asyncio.to_thread(self.replica.pause_replay)

    async def resume(self) -> None:
        await asyncio.to_thread(self.replica.resume_replay)

    def replica_scans(self) -> int:
        """Index and sequential scans the replica itself ran on the service's tables."""
        return int(
            self.replica.sql(
                "SELECT coalesce(sum(coalesce(idx_scan, 0) + coalesce(seq_scan, 0)), 0)"
                " FROM pg_stat_user_tables",
                DATABASE,
            )
        )

    def restart_replica(self) -> None:
        """Start the replica after a SIGKILL, once its old processes have let go."""
        for attempt in range(100):
            try:
                self.replica.start()
                return
            except RuntimeError:
                if attempt == 99:
                    raise
                time.sleep(0.2)


@asynccontextmanager
async def replicated(bin_dir: Path) -> AsyncIterator[Replicated]:
    primary = PrivateCluster(bin_dir)
    replica: PrivateCluster | None = None
    redis: PrivateRedis | None = None
    try:
        await asyncio.to_thread(primary.create)
        await asyncio.to_thread(primary.start)
        await prepare_database(primary.url(DATABASE))
        replica = PrivateCluster.replica_of(primary)
        await asyncio.to_thread(replica.start)
        redis = PrivateRedis()
        await asyncio.to_thread(redis.wait_ready)
        yield Replicated(primary, replica, redis)
    finally:
        if redis is not None:
            redis.stop()
        if replica is not None:
            replica.destroy()
        primary.destroy()


def replica_counters(log: str) -> tuple[Counter[str], Counter[str]]:
    """Reads by server and fall-backs by reason of every server process, summed from each
    process's last counter line."""
    last: dict[Any, dict[str, dict[str, int]]] = {}
    for line in log.splitlines():
        if '"service.db.replicas"' not in line or "replica counters" not in line:
            continue
        try:
            record = json.loads(line[line.index("{") :])
        except ValueError:
            continue
        last[record["pid"]] = record["replicas"]
    reads: Counter[str] = Counter()
    fallbacks: Counter[str] = Counter()
    for counters in last.values():
        reads.update(counters["reads"])
        fallbacks.update(counters["fallbacks"])
    return reads, fallbacks
