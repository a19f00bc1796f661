"""Read replicas: which server a read-only unit of work reads from, decided without a query.

A ``ReplicaSet`` belongs to one primary engine (one serving app). Its poller
asks, every ``poll_interval`` seconds, the primary for its WAL insert position
and each replica for the position it has replayed. A read-only unit then
chooses from those figures alone, with no round trip: a replica in rotation
whose last known position has reached the unit's floor (``_causal``: the
caller's last write), else the primary.

A replica is in rotation while its last poll answered, it is still a standby,
and it is at most ``max_lag`` seconds behind: behind means missing WAL the
primary had at some poll, and the lag is the age of the oldest such poll. A
replica that stops answering, or falls behind, leaves the rotation at the next
poll and rejoins at the first healthy one; a statement that fails on a replica
(it was killed, say) is run again on the primary at once, which is never
behind, and the unit stays there.

Replica positions only grow (replay is monotonic), so a position polled
before a unit chose its replica is a lower bound of what that unit reads.

The primary's insert position has one quirk: when nothing has been written on
the current WAL page yet, it points past the page's header, where no replica's
replay position ever is (an idle primary after a segment switch stays there).
Such a position is taken as the page's start (``settled``): every record before
it ends there.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db import _events as events
from service.db._engine import readonly_bind

__all__ = ["Replica", "ReplicaSet", "ReplicaStats", "format_position", "parse_position"]

logger = logging.getLogger("service.db.replicas")

PRIMARY_ONLY = 2**64 - 1
"""A floor no replica reaches: the reads go to the primary."""

_PRIMARY_SAMPLE = text("SELECT pg_current_wal_insert_lsn()")
_WAL_GEOMETRY = text(
    "SELECT current_setting('wal_block_size')::int,"
    " (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size')"
)
_SHORT_HEADER, _LONG_HEADER = 24, 40  # WAL page headers: a page's, a segment's first page's
_REPLICA_SAMPLE = text("SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()")


def parse_position(token: str) -> int:
    """A WAL position as PostgreSQL writes it (``16/B374D848``), as a number."""
    high, _, low = token.strip().partition("/")
    if not high or not low or len(high) > 8 or len(low) > 8:
        raise ValueError(f"not a WAL position: {token!r}")
    return (int(high, 16) << 32) | int(low, 16)


def format_position(position: int) -> str:
    return f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"


@dataclass
class ReplicaStats:
    """What one app's read-only units did, and its replicas as the poller last saw them.

    Counters grow for the life of the app; ``as_dict()`` is what the log line shows.
    """

    reads: Counter[str] = field(default_factory=Counter)
    """Read-only units that read, by the server they read from: ``primary`` or a replica's
    name (a unit that moved counts where it moved to)."""
    fallbacks: Counter[str] = field(default_factory=Counter)
    """Of those, the ones that read from the primary, by reason: ``behind`` (no replica in
    rotation had the caller's writes yet), ``unavailable`` (none in rotation), ``failed`` (a
    statement failed on its replica and ran again on the primary), ``no_position`` (the
    caller's position could not be read from Redis), ``asked`` (the app asked for the
    primary: ``read_from_primary()``), ``outside`` (no request or job to go by)."""
    lag_seconds: dict[str, float | None] = field(default_factory=dict)
    lag_bytes: dict[str, int | None] = field(default_factory=dict)
    in_rotation: dict[str, bool] = field(default_factory=dict)
    positions_recorded: int = 0
    """Committed writing units whose WAL position was read, for their callers' next reads."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "reads": dict(self.reads),
            "fallbacks": dict(self.fallbacks),
            "lag_seconds": {
                name: None if lag is None else round(lag, 3)
                for name, lag in self.lag_seconds.items()
            },
            "lag_bytes": dict(self.lag_bytes),
            "in_rotation": dict(self.in_rotation),
            "positions_recorded": self.positions_recorded,
        }


class PositionStore(Protocol):
    """Where callers' positions are kept between requests (Redis: ``_replica_start``)."""

    async def get(self, key: str) -> int | None: ...

    async def record(self, key: str, position: int) -> None: ...

    async def close(self) -> None: ...


class Replica:
    """One replica: its engine, and what the poller last learnt of it."""

    def __init__(self, name: str, engine: AsyncEngine) -> None:
        self.name = name
        self.engine = engine
        reads = readonly_bind(engine)
        assert isinstance(reads, AsyncEngine)
        self.reads: AsyncEngine = reads
        """The bind of a read-only unit on it (asyncpg's autocommit, as on the primary)."""
        self.position: int | None = None
        self.polled_at = 0.0
        self.in_rotation = False
        self.why_out: str | None = "not polled yet"


class ReplicaSet:
    """A primary's replicas, their poller, and the choice of a read-only unit's server."""

    def __init__(
        self,
        primary: AsyncEngine,
        replicas: Sequence[Replica],
        *,
        store: PositionStore,
        max_lag: float,
        poll_interval: float,
        log_interval: float,
    ) -> None:
        self.primary = primary
        primary_reads = readonly_bind(primary)
        assert isinstance(primary_reads, AsyncEngine)
        self.primary_reads = primary_reads
        self.replicas = list(replicas)
        self.store = store
        self.max_lag = max_lag
        self.poll_interval = poll_interval
        self.poll_timeout = max(1.0, 5 * poll_interval)
        self.log_interval = log_interval
        self.stats = ReplicaStats()
        self.stale_after = max(1.0, 10 * poll_interval)
        """Seconds after which a replica's last poll is too old to choose it by."""
        self._rotation: list[Replica] = []
        self._turn = itertools.count()
        # (monotonic time, primary position) of recent polls, oldest first.
        self._samples: deque[tuple[float, int]] = deque()
        self._poller: asyncio.Task[None] | None = None
        self._geometry: tuple[int, int] | None = None  # WAL block and segment sizes
        self._by_read_bind: dict[object, Replica] = {r.reads: r for r in self.replicas}
        for replica in self.replicas:
            self.stats.in_rotation[replica.name] = False
            self.stats.lag_seconds[replica.name] = None
            self.stats.lag_bytes[replica.name] = None

    # The choice, on every read-only unit: no I/O.

    def settled(self, position: int) -> int:
        """``position``, or the start of its WAL page if it points just past the page's header.

        Unknown WAL geometry (the primary not reached yet) leaves it as it is: a
        floor too high sends reads to the primary, never to a replica without the data.
        """
        if self._geometry is None or position == PRIMARY_ONLY:
            return position
        block, segment = self._geometry
        if position % segment == _LONG_HEADER:
            return position - _LONG_HEADER
        if position % block == _SHORT_HEADER and position % segment != _SHORT_HEADER:
            return position - _SHORT_HEADER
        return position

    def choose(self, floor: int) -> tuple[AsyncEngine, int, str | None]:
        """The read bind for a unit that must see ``floor``, the position its server had
        reached, and why it is the primary (``None`` for a replica)."""
        floor = self.settled(floor)
        now = time.monotonic()
        fresh = [r for r in self._rotation if now - r.polled_at < self.stale_after]
        caught_up = [r for r in fresh if r.position is not None and r.position >= floor]
        if not caught_up:
            return self.primary_reads, PRIMARY_ONLY, "behind" if fresh else "unavailable"
        replica = caught_up[next(self._turn) % len(caught_up)]
        assert replica.position is not None
        return replica.reads, replica.position, None

    def server_name(self, bind: object) -> str:
        replica = self.replica_of(bind)
        return "primary" if replica is None else replica.name

    def replica_of(self, bind: object) -> Replica | None:
        return self._by_read_bind.get(bind)

    def failed(self, replica: Replica, error: BaseException) -> None:
        """A statement failed on ``replica``: out of rotation until a poll finds it healthy."""
        self._leave(replica, f"a statement failed: {error.__class__.__name__}")

    # The poller.

    async def start(self) -> None:
        """Poll once (so the first requests may use replicas), then every ``poll_interval``."""
        await self.poll()
        self._poller = asyncio.create_task(self._poll_forever(), name="replica poller")

    async def stop(self) -> None:
        poller, self._poller = self._poller, None
        if poller is not None:
            poller.cancel()
            try:
                await poller
            except asyncio.CancelledError:
                pass
        logger.info("replica counters at stop", extra=self._counters())
        for replica in self.replicas:
            await replica.engine.dispose()
        await self.store.close()

    def _counters(self) -> dict[str, Any]:
        return {"replicas": self.stats.as_dict(), "pid": os.getpid()}

    async def _poll_forever(self) -> None:
        logged = time.monotonic()
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                await self.poll()
            except Exception:  # never let the poller die: the replicas would stay as they are
                logger.exception("polling the replicas failed")
            if time.monotonic() - logged >= self.log_interval:
                logged = time.monotonic()
                logger.info("replica counters", extra=self._counters())

    async def poll(self) -> None:
        """One poll of the primary and of every replica, at the same time; then the verdicts."""
        _, *answers = await asyncio.gather(
            self._sample_primary(), *map(self._ask_replica, self.replicas)
        )
        for replica, answer in zip(self.replicas, answers, strict=True):
            self._judge(replica, answer)

    async def _sample_primary(self) -> None:
        try:
            async with asyncio.timeout(self.poll_timeout):
                async with self.primary_reads.connect() as connection:
                    if self._geometry is None:
                        block, segment = (await connection.execute(_WAL_GEOMETRY)).one()
                        self._geometry = (int(block), int(segment))
                    position = (await connection.execute(_PRIMARY_SAMPLE)).scalar_one()
        except Exception as error:
            logger.debug("the primary's position could not be read: %r", error)
            return
        now = time.monotonic()
        self._samples.append((now, self.settled(int(position))))
        keep_after = now - (self.max_lag + 2 * self.stale_after)
        while len(self._samples) > 1 and self._samples[1][0] < keep_after:
            self._samples.popleft()

    async def _ask_replica(self, replica: Replica) -> tuple[Any, float] | Exception:
        try:
            async with asyncio.timeout(self.poll_timeout):
                async with replica.reads.connect() as connection:
                    row = (await connection.execute(_REPLICA_SAMPLE)).one()
        except Exception as error:
            return error
        return tuple(row), time.monotonic()

    def _judge(self, replica: Replica, answer: tuple[Any, float] | Exception) -> None:
        if isinstance(answer, Exception):
            self._leave(replica, f"unreachable: {answer.__class__.__name__}")
            self._publish(replica)
            return
        (in_recovery, position), polled_at = answer
        if not in_recovery or position is None:
            self._leave(replica, "not a standby (promoted?)")
            self._publish(replica)
            return
        replica.position = int(position)
        replica.polled_at = polled_at
        lag = self._lag(replica.position, replica.polled_at)
        self.stats.lag_seconds[replica.name] = lag
        latest = self._samples[-1][1] if self._samples else None
        self.stats.lag_bytes[replica.name] = (
            None if latest is None else max(0, latest - replica.position)
        )
        if lag is None:
            self._leave(replica, "lag unknown: the primary's position could not be read")
        elif lag > self.max_lag:
            self._leave(replica, f"{lag:.1f}s behind (DATABASE_REPLICA_MAX_LAG {self.max_lag})")
        else:
            self._join(replica)
        self._publish(replica)

    def _publish(self, replica: Replica) -> None:
        if events.replica_polled:
            events.replica_polled.send(
                events.ReplicaPolled(
                    replica.name,
                    replica.in_rotation,
                    self.stats.lag_seconds[replica.name],
                    self.stats.lag_bytes[replica.name],
                )
            )

    def _lag(self, position: int, now: float) -> float | None:
        """How old the oldest primary position this replica has not replayed is (0: none)."""
        if not self._samples:
            return None
        for sampled_at, sampled in self._samples:
            if sampled > position:
                return max(0.0, now - sampled_at)
        return 0.0

    def _join(self, replica: Replica) -> None:
        if replica.in_rotation:
            return
        replica.in_rotation = True
        was_out, replica.why_out = replica.why_out, None
        self._rotation = [r for r in self.replicas if r.in_rotation]
        self.stats.in_rotation[replica.name] = True
        logger.info("replica %s joins the rotation (it was out: %s)", replica.name, was_out)

    def _leave(self, replica: Replica, why: str) -> None:
        if not replica.in_rotation:
            replica.why_out = why
            return
        replica.in_rotation = False
        replica.why_out = why
        self._rotation = [r for r in self.replicas if r.in_rotation]
        self.stats.in_rotation[replica.name] = False
        logger.warning("replica %s leaves the rotation: %s", replica.name, why)


CONFIG_DEFAULTS: dict[str, tuple[float, Callable[[Any], float]]] = {
    "DATABASE_REPLICA_MAX_LAG": (10.0, float),
    "DATABASE_REPLICA_POLL_INTERVAL": (0.1, float),
    "DATABASE_REPLICA_LOG_INTERVAL": (60.0, float),
}


def replica_urls(config: Mapping[str, Any]) -> list[str]:
    """``DATABASE_REPLICA_URLS``: a list, or one string of URLs separated by commas or spaces."""
    urls = config.get("DATABASE_REPLICA_URLS") or []
    if isinstance(urls, str):
        urls = urls.replace(",", " ").split()
    return [str(url) for url in urls]


def replica_name(url: str) -> str:
    """How logs and counters name a replica: ``host:port/database``, without credentials."""
    parsed = make_url(url)
    return f"{parsed.host or 'localhost'}:{parsed.port or 5432}/{parsed.database or ''}"


def setting(config: Mapping[str, Any], key: str) -> float:
    default, convert = CONFIG_DEFAULTS[key]
    value = config.get(key)
    return default if value in (None, "") else convert(value)
