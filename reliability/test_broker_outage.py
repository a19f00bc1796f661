"""Broker outage: with Celery, Redis is stopped for 5 s while statements are asked for.

The broker is the transport; the outbox is the truth. A private Redis (on a port
of its own, keeping nothing on disk, as the machine's Redis does) carries the
jobs from Hypercorn (2 workers, the Celery backend) to a real ``service worker``.
Under load, Redis is stopped for 5 s and started again, empty: messages it held
are gone, and every send meanwhile fails. The requests go on being answered 202
(the job is a row committed with the statement), and once Redis is back the
sweepers send again whatever was not delivered: every statement answered 202 is
ready, with the right figures.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest

from bench.harness import ROOT, free_port
from reliability.conftest import Figures, NewDatabase
from reliability.harness import client, serving
from reliability.statements import StatementLog, asking, customers_with_a_year, judge
from reliability.statements import wait_until_done as all_done

CLIENTS = 4
PAUSE = 0.1
"""Each client waits this long after each answer: a load the worker keeps up with, so that the
time to recover measures the outage, not a backlog of the worker's."""
OUTAGE = 5.0
RECOVERY_LIMIT = 20.0
"""Seconds after Redis is back by which every statement must be ready."""


class PrivateRedis:
    """``redis-server`` on a free port of 127.0.0.1, nothing saved; stopped and started at will."""

    def __init__(self, log_dir: Path) -> None:
        found = shutil.which("redis-server")
        if found is None:
            message = "redis-server was not found"
            if os.environ.get("CI") == "true":
                pytest.fail(f"{message}; CI=true: a missing Redis fails the run", pytrace=False)
            pytest.skip(message)
        self.binary = found
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log = (log_dir / "redis.log").open("ab")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            ping = subprocess.run(
                ["redis-cli", "-p", str(self.port), "ping"], capture_output=True, text=True
            )
            if ping.stdout.strip() == "PONG":
                return
            time.sleep(0.05)
        raise RuntimeError("the private Redis did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=10)
        self.process = None


@contextmanager
def private_redis(log_dir: Path) -> Iterator[PrivateRedis]:
    redis = PrivateRedis(log_dir)
    redis.start()
    try:
        yield redis
    finally:
        redis.stop()
        redis.log.close()


@asynccontextmanager
async def celery_worker(env: dict[str, str], log_path: Path) -> AsyncIterator[None]:
    """``service worker`` (2 forked processes), ready to consume; warm shutdown at the end."""
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "service"),
            "worker",
            "--concurrency=2",
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            async with asyncio.timeout(60):
                while " ready." not in await asyncio.to_thread(log_path.read_text):
                    if process.returncode is not None:
                        raise RuntimeError("the worker exited")
                    await asyncio.sleep(0.1)
            yield
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 20)
            except TimeoutError:
                os.killpg(process.pid, signal.SIGKILL)
                await process.wait()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_every_statement_answered_202_is_ready_after_a_broker_outage(
    backend: str, new_database: NewDatabase, tmp_path: Path, figures: Figures
) -> None:
    url = await new_database(backend)
    log = StatementLog()
    with private_redis(tmp_path) as redis:
        env = {
            "DATABASE_URL": url,
            "CELERY_BROKER_URL": redis.url,
            "CELERY_QUEUE": f"outage-{backend}",
        }
        async with (
            celery_worker(env, tmp_path / "worker.log"),
            serving(f"outage-{backend}", url, tmp_path, workers=2, env=env) as server,
            client(server) as http,
        ):
            people = await customers_with_a_year(http, url, f"outage-{backend}")
            async with asking(http, log, people, clients=CLIENTS, seed=7, pause=PAUSE):
                await asyncio.sleep(1.5)
                redis.stop()
                stopped_at = time.monotonic()
                await asyncio.sleep(OUTAGE)
                redis.start()
                back_at = time.monotonic()
                await asyncio.sleep(1.5)
            ready_after, still_pending = await all_done(url, within=RECOVERY_LIMIT, since=back_at)
    problems, by_status = await judge(url, log)

    during = [ask for ask in log.asked if stopped_at <= ask.started < back_at]
    accepted_during = [ask for ask in during if ask.status == 202]
    figures("statement requests by outcome", log.outcomes())
    figures(
        "asked while Redis was down: answered 202 / all",
        f"{len(accepted_during)} / {len(during)}",
    )
    figures(
        "slowest answer while Redis was down (s)",
        f"{max((ask.finished - ask.started for ask in during), default=0):.3f}",
    )
    figures(
        "all ready after Redis was back (s)",
        "never" if ready_after is None else f"{ready_after:.2f} (limit {RECOVERY_LIMIT:.0f})",
    )
    figures("stored statements by status", by_status)
    assert ready_after is not None, f"{still_pending} statements still pending"
    assert problems == [], "\n".join(problems[:20])
    assert accepted_during, "no statement was asked for while Redis was down: it proves nothing"
    assert len(accepted_during) == len(during), "a request failed while the broker was down"
