"""A dispatcher in a process of its own: the two-process test starts two of these.

    python -c 'from tests.jobs.dispatcher_process import main; main()' URL LOG

It prints ``ready``, waits for a line on its standard input, then runs a
dispatcher (sweeper and lease renewals) on the database until nothing is left to
deliver and the periodic job ``hourly`` has run, or 60 s have passed. Every job
writes ``start``/``end`` lines to LOG, with its number and the process id.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from datetime import timedelta
from typing import Any

from service import modules
from service.db import make_engine, unit_of_work
from service.jobs import Dispatcher, JobRow, job
from service.jobs._dispatcher import spawn_task
from service.jobs._outbox import utcnow
from tests.databases import PGBOUNCER
from tests.db.models import Widget

LEASE = timedelta(seconds=2)
HOURLY = -1


def _log(event: str, number: int) -> None:
    line = f"{event} {number} {os.getpid()} {time.time():.6f}\n".encode()
    descriptor = os.open(os.environ["JOBS_TEST_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(descriptor, line)  # one write, appended whole: the processes never interleave
    finally:
        os.close(descriptor)


@job()
async def logged(number: int, seconds: float) -> None:
    _log("start", number)
    await asyncio.sleep(seconds)
    await Widget(name=f"logged {number}").save()
    _log("end", number)


async def hourly() -> None:
    _log("start", HOURLY)
    _log("end", HOURLY)


async def _finished() -> bool:
    left = await JobRow.query.where(JobRow.dedupe_key.is_(None)).count()
    periodic = await JobRow.query.where(JobRow.name == f"{__name__}.hourly").first()
    return (
        left == 0
        and periodic is not None
        and periodic.due_at is not None
        and (periodic.due_at > utcnow() + timedelta(minutes=30))
    )


async def _run(url: str) -> None:
    engine = make_engine(url, pgbouncer=PGBOUNCER)
    tasks: set[asyncio.Task[Any]] = set()
    stopping = asyncio.Event()
    dispatcher = Dispatcher(
        bind=engine,
        spawn=spawn_task(tasks),
        stopping=stopping,
        lease=LEASE,
        sweep_interval=0.02,
        concurrency=4,
    )
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    loops = [
        asyncio.ensure_future(dispatcher.sweeper()),
        asyncio.ensure_future(dispatcher.renewals()),
    ]
    deadline = time.monotonic() + 60
    finished = unit_of_work(bind=engine, readonly=True)(_finished)
    while time.monotonic() < deadline:  # the database is polled: nothing to wait on here
        if await finished():
            break
        await asyncio.sleep(0.1)
    stopping.set()
    await asyncio.gather(*loops, *tasks)
    await dispatcher.release()
    total = await unit_of_work(bind=engine, readonly=True)(_count)()
    print(f"done, {total} jobs left", flush=True)
    await engine.dispose()


async def _count() -> int:
    return int(await JobRow.query.count())


def main() -> None:
    modules.load()
    job(every=timedelta(hours=1))(hourly)  # only in these processes, not in the suite's
    url, os.environ["JOBS_TEST_LOG"] = sys.argv[1], sys.argv[2]
    asyncio.run(_run(url))
