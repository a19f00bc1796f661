"""Database outage: connections cut, then the PostgreSQL server stopped, all under load.

The suite's private cluster is used, so stopping it touches nobody else. The
timeline, with clients writing throughout and ``/readyz`` polled every 100 ms:

1. load for 1.5 s, then every connection of the service is cut
   (``pg_terminate_backend``);
2. 1.5 s later the server is stopped (``pg_ctl stop -m fast``), and stays down 3 s;
3. it is started again, and the load goes on 6 s more (timed from the start
   command, so PostgreSQL's own start-up counts against the service); the
   service is never restarted.

Verdicts: during the outage every answer is a JSON 503 within the connect
timeout, and no request at all waits longer than the configured timeouts add
up to; ``/readyz`` answers 503; no 500 ever; within 5 s of the database
accepting connections again, every request succeeds again and keeps
succeeding; and the audit finds every acknowledged write stored and every
refused one absent.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

from reliability.audit import audit
from reliability.conftest import Figures, NewDatabase
from reliability.harness import client, serving
from reliability.load import Write, WriteLog, customers, load
from reliability.postgres import PrivateCluster

CLIENTS = 8
CONNECT_TIMEOUT = 2.0
POOL_TIMEOUT = 2.0
COMMAND_TIMEOUT = 5.0
RECOVERY_LIMIT = 5.0
HANG_LIMIT = POOL_TIMEOUT + CONNECT_TIMEOUT + COMMAND_TIMEOUT
"""The longest a request may wait on the database: for a connection, to open one, per statement."""
TIMEOUTS = {
    "DATABASE_CONNECT_TIMEOUT": str(CONNECT_TIMEOUT),
    "DATABASE_POOL_TIMEOUT": str(POOL_TIMEOUT),
    "DATABASE_COMMAND_TIMEOUT": str(COMMAND_TIMEOUT),
    "READINESS_TIMEOUT": "1",
}


@dataclass
class Probe:
    started: float
    finished: float
    status: int
    code: str | None


async def _poll_readiness(http: httpx.AsyncClient, stop: asyncio.Event, seen: list[Probe]) -> None:
    while not stop.is_set():
        started = time.monotonic()
        response = await http.get("/readyz")
        code = response.json().get("error", {}).get("code")
        seen.append(Probe(started, time.monotonic(), response.status_code, code))
        await asyncio.sleep(0.1)


async def _cut_connections(cluster: PrivateCluster, database: str) -> int:
    admin = create_async_engine(cluster.url("postgres"), isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as connection:
            cut = await connection.scalar(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": database},
            )
    finally:
        await admin.dispose()
    return int(cut or 0)


def _failed(write: Write) -> bool:
    return write.status >= 500


async def test_an_outage_answers_quick_503s_and_the_service_recovers_by_itself(
    postgres: PrivateCluster, new_database: NewDatabase, tmp_path: Path, figures: Figures
) -> None:
    url = await new_database("postgresql")
    log = WriteLog(prefix="outage")
    probes: list[Probe] = []
    async with serving("outage", url, tmp_path, env=TIMEOUTS) as server:
        async with client(server) as http:
            people = await customers(http, log, count=6)
            polling = asyncio.Event()
            poller = asyncio.create_task(_poll_readiness(http, polling, probes))
            async with load(http, log, people, clients=CLIENTS, pause=0.01):
                try:
                    await asyncio.sleep(1.5)
                    cut_at = time.monotonic()
                    cut = await _cut_connections(postgres, str(make_url(url).database))
                    await asyncio.sleep(1.5)
                    await asyncio.to_thread(postgres.stop, "fast")
                    down_at = time.monotonic()
                    await asyncio.sleep(3)
                    # Recovery is timed from the moment the start begins: conservative, it
                    # includes PostgreSQL's own start-up.
                    up_at = time.monotonic()
                    await asyncio.to_thread(postgres.start)
                    await asyncio.sleep(RECOVERY_LIMIT + 1)
                finally:
                    if not postgres.running():
                        postgres.start()  # the other tests share the cluster
                    polling.set()
                    await poller
        assert server.process.poll() is None, "the service itself must never have been restarted"

    outages = [
        write for write in log.writes if down_at <= write.started and write.finished <= up_at
    ]
    answered = [write for write in log.writes if write.status > 0]
    not_503 = sorted({write.status for write in answered if write.status >= 500} - {503})
    bad_503 = [
        write
        for write in answered
        if write.status == 503
        and (write.body or {}).get("error", {}).get("code") != "service_unavailable"
    ]
    slowest_503 = max((write.latency for write in answered if write.status == 503), default=0.0)
    slowest = max(write.latency for write in answered)
    down_probes = [
        probe for probe in probes if down_at <= probe.started and probe.finished <= up_at
    ]
    after = [write for write in log.writes if write.started >= up_at]
    failed_after = [write.finished - up_at for write in after if _failed(write)]
    failed_after += [
        probe.finished - up_at for probe in probes if probe.started >= up_at and probe.status != 200
    ]
    first_success = min(
        (write.finished - up_at for write in after if write.status == 201), default=None
    )
    cut_failures = sum(
        1 for write in log.writes if cut_at <= write.started < cut_at + 1 and _failed(write)
    )
    result = await audit(url, log)

    figures("connections cut by pg_terminate_backend", cut)
    figures("5xx among writes started within 1 s of the cut", cut_failures)
    figures("writes while the database was down (all 503)", len(outages))
    figures("slowest 503 (s)", f"{slowest_503:.3f} (limit: connect timeout {CONNECT_TIMEOUT} s)")
    figures("slowest answer of all (s)", f"{slowest:.3f} (limit: {HANG_LIMIT} s, the timeouts)")
    figures(
        "/readyz while down",
        f"{sum(p.status == 503 for p in down_probes)} of {len(down_probes)} answered 503",
    )
    figures(
        "first 201 after the database was started (s)",
        f"{first_success:.3f}" if first_success is not None else "none",
    )
    figures(
        "last failure after the database was started (s)",
        f"{max(failed_after):.3f}" if failed_after else "none",
    )
    figures("writes by outcome", dict(sorted(log.outcomes().items())))
    for name, value in result.figures().items():
        figures(name, value)

    others = sorted({(write.status, str(write.body)) for write in outages if write.status != 503})
    assert outages and not others, f"while down, every write is a 503: {others}"
    assert not not_503 and not bad_503, (
        f"other 5xx: {not_503}; 503s that are not JSON: {bad_503[:3]}"
    )
    assert slowest_503 < CONNECT_TIMEOUT, "a 503 waited longer than the connect timeout"
    assert slowest < HANG_LIMIT, "a request hung longer than its timeouts allow"
    assert down_probes and all(probe.code == "database_unavailable" for probe in down_probes)
    assert first_success is not None and first_success < RECOVERY_LIMIT
    assert not failed_after or max(failed_after) < RECOVERY_LIMIT, "not recovered within 5 s"
    assert log.outcomes()["no answer"] == 0 and log.outcomes()["not sent"] == 0
    assert result.held, "\n".join(result.problems[:20])
