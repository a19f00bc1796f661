"""Two dispatcher processes on one outbox never run one job twice, let alone at the same time."""

from __future__ import annotations

import asyncio
import os
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db import unit_of_work
from service.jobs import JobRow, enqueue, registry
from tests.db.models import Widget
from tests.jobs import dispatcher_process
from tests.jobs.dispatcher_process import HOURLY, LEASE

ROOT = Path(__file__).resolve().parent.parent.parent
SHORT, LONG = 150, 6
"""Jobs of 10 ms, and jobs that outlast their lease: only its renewals keep them."""
LONG_SECONDS = LEASE.total_seconds() * 1.25
START = "from tests.jobs.dispatcher_process import main; main()"


async def _dispatcher(url: str, log: Path) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        START,
        url,
        str(log),
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 60)
    assert line == b"ready\n", line + await process.stdout.read()
    return process


@pytest.mark.service_committing
async def test_two_dispatcher_processes_never_run_one_job_twice_at_the_same_time(
    service_database_url: str, service_engine: AsyncEngine, tmp_path: Path
) -> None:
    async with unit_of_work(bind=service_engine):  # a backlog, as a `service` command leaves it
        for number in range(SHORT):
            enqueue(dispatcher_process.logged, number, 0.01)
        for number in range(SHORT, SHORT + LONG):
            enqueue(dispatcher_process.logged, number, LONG_SECONDS)
    log = tmp_path / "runs.log"
    processes = [await _dispatcher(service_database_url, log) for _ in range(2)]
    for process in processes:  # both start sweeping at once
        assert process.stdin is not None
        process.stdin.write(b"go\n")
        await process.stdin.drain()
    outputs = []
    for process in processes:
        output, _ = await asyncio.wait_for(process.communicate(), 90)
        outputs.append(output.decode())
        assert process.returncode == 0, output.decode()

    runs: dict[int, list[tuple[str, int, float]]] = defaultdict(list)
    for line in log.read_text().splitlines():
        event, job_number, pid, at = line.split()
        runs[int(job_number)].append((event, int(pid), float(at)))
    executions = {n: sum(1 for e in events if e[0] == "start") for n, events in runs.items()}
    by_process: dict[int, int] = defaultdict(int)
    for events in runs.values():
        for event, process_id, _ in events:
            by_process[process_id] += event == "start"
    twice = {n: count for n, count in executions.items() if count != 1}
    tails = "\n".join(output[-1500:] for output in outputs)
    assert twice == {}, f"jobs run other than once: {twice}\n{tails}"
    assert set(executions) == {*range(SHORT + LONG), HOURLY}  # every job, and the periodic one
    for events in runs.values():  # each run ended before any other began
        assert [event for event, _, _ in sorted(events, key=lambda e: e[2])] == ["start", "end"]
    assert len(by_process) == 2 and min(by_process.values()) > 0, "one process did everything"
    async with service_engine.connect() as connection:
        widgets = await connection.scalar(select(func.count()).select_from(Widget))
        left = (await connection.execute(select(JobRow.name, JobRow.state))).all()
    assert widgets == SHORT + LONG  # each job's write committed once, with its acknowledgement
    hourly = f"{dispatcher_process.__name__}.hourly"  # registered in the dispatchers' processes
    periodic = [hourly, *(name for name, job in registry.items() if job.every is not None)]
    assert sorted(left) == [(name, "scheduled") for name in sorted(periodic)]  # one of each
