"""One side of ``bench/jobs.py``: jobs run by the serving process, measured in it.

Run by ``bench/jobs.py`` with ``PYTHONPATH`` naming the tree whose ``service``
is measured (this one, or the base commit's), so it imports nothing but
``service`` and libraries, and uses only what both trees have: ``create_app``,
``unit_of_work``, ``Model``, ``@job`` and ``enqueue``. It prints one JSON line:

- ``drain``: 10,000 jobs enqueued in one unit of work (a backlog): the seconds
  from the commit until the last one has finished, how many failed (the base
  starts them all at once: those that wait longer than ``DATABASE_POOL_TIMEOUT``
  for a connection fail, and are gone), and each job's wait from its enqueue
  until its body started;
- ``latency``: jobs enqueued one at a time, each in a unit of work that also
  writes a row, each waited for before the next: enqueue-to-start.

A job's body writes one row, in the job's own unit of work.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from typing import Any, cast

from sqlalchemy import String, Table, delete, inspect
from sqlalchemy.orm import Mapped, mapped_column

from service.app import create_app
from service.db import Model, unit_of_work
from service.jobs import enqueue, job


class BenchMark(Model):
    """What the bench's jobs and enqueuers write: one small row each."""

    __tablename__ = "bench_jobs_marks"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(10))


enqueued: dict[int, float] = {}
started: dict[int, float] = {}
finished: dict[int, float] = {}
done = asyncio.Event()
expected = 0


class _Failures(logging.Handler):
    """Counts the jobs that failed: the base's background backend logs them, and drops them."""

    count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR:
            _Failures.count += 1
            _check_done()


def _check_done() -> None:
    if len(finished) + _Failures.count >= expected:
        done.set()


@job()
async def bench_job(number: int) -> None:
    started[number] = time.perf_counter()
    await BenchMark(kind="job").save()
    finished[number] = time.perf_counter()
    _check_done()


async def _reset(engine: Any) -> None:
    async with engine.begin() as connection:
        table = cast(Table, BenchMark.__table__)
        await connection.run_sync(lambda sync: table.create(sync, checkfirst=True))
        await connection.execute(delete(BenchMark))
        if await connection.run_sync(lambda sync: inspect(sync).has_table("jobs")):
            await connection.exec_driver_sql("DELETE FROM jobs")


def _waits(numbers: range) -> list[float]:
    return [started[n] - enqueued[n] for n in numbers if n in started]


async def _drain(count: int, seconds: float) -> dict[str, Any]:
    global expected
    expected, numbers = count, range(count)
    _Failures.count = 0
    done.clear()
    async with unit_of_work():
        for number in numbers:
            enqueued[number] = time.perf_counter()
            enqueue(bench_job, number)
    committed = time.perf_counter()
    try:
        await asyncio.wait_for(done.wait(), seconds)
    except TimeoutError:
        pass
    last = max(finished.values(), default=committed)
    return {
        "jobs": count,
        "finished": len(finished),
        "failed": _Failures.count,
        "seconds": last - committed,
        "waits": _waits(numbers),
    }


async def _latency(count: int, offset: int) -> dict[str, Any]:
    global expected
    numbers = range(offset, offset + count)
    for number in numbers:
        expected = len(finished) + 1
        done.clear()
        async with unit_of_work():
            await BenchMark(kind="request").save()
            enqueued[number] = time.perf_counter()
            enqueue(bench_job, number)
        await asyncio.wait_for(done.wait(), 30)
    return {"jobs": count, "waits": _waits(numbers)}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--drain", type=int, default=10_000)
    parser.add_argument("--latency", type=int, default=300)
    parser.add_argument("--timeout", type=float, default=300)
    options = parser.parse_args()
    app = create_app({"DATABASE_URL": options.url, "JOBS_BACKEND": "background"})
    logging.getLogger("service.jobs").addHandler(_Failures())
    async with app.test_app():
        async with app.app_context():
            from service.app import db

            await _reset(db.engine)
            latency = await _latency(options.latency, offset=options.drain)  # warms up too
            for measured in (enqueued, started, finished):
                measured.clear()
            drain = await _drain(options.drain, options.timeout)
            latency_again = await _latency(options.latency, offset=options.drain)
    latency["waits"] += latency_again["waits"]
    print(json.dumps({"drain": drain, "latency": latency}))


if __name__ == "__main__":
    asyncio.run(main())
