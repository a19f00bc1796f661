"""A Celery worker in a process of its own, on the test's own queue (``service worker``, or a
script that runs one), from its start until it is ready, then stopped with a warm shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from tests.conftest import Broker

ROOT = Path(__file__).resolve().parent.parent


@asynccontextmanager
async def celery_worker(
    command: Sequence[str], broker: Broker, database_url: str, **env: str
) -> AsyncIterator[None]:
    """Run ``command`` with the broker, queue and database set; until Celery says it is ready."""
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=ROOT,
        env={
            **os.environ,
            "DATABASE_URL": database_url,
            "CELERY_BROKER_URL": broker.url,
            "CELERY_QUEUE": broker.queue,
            **env,
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert process.stdout is not None
    seen: list[str] = []
    try:
        async with asyncio.timeout(30):
            while not any(" ready." in line for line in seen):
                line = (await process.stdout.readline()).decode()
                assert line, "the worker exited:\n" + "".join(seen)
                seen.append(line)
        yield
    finally:
        process.send_signal(signal.SIGTERM)  # warm shutdown
        try:
            await asyncio.wait_for(process.communicate(), 15)
        except TimeoutError:
            process.kill()
            await process.wait()
