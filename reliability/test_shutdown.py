"""Graceful shutdown: SIGTERM under load finishes or rolls back what is in flight.

Hypercorn (2 workers, ``--graceful-timeout``) gets SIGTERM while 16 clients
write. It stops accepting connections, lets in-flight requests finish within the
grace period and cancels what is left, which the unit of work rolls back.

The signal goes to Hypercorn's master process, as ``kill PID``, Docker and
Kubernetes send it. Sent to the whole process group (systemd's default
``KillMode=control-group``), it also reaches the workers, which Hypercorn leaves
with the default SIGTERM action: they die at once, as in the crash test, and
in-flight requests are cut off (all-or-nothing still holds, but a commit may go
unanswered). Use ``KillMode=mixed`` under systemd. The
audit then requires every 2xx stored, every 4xx/5xx absent, nothing half
applied; and, stronger than after a crash, nothing applied that was not
answered: a request the server dropped while stopping must not have been
committed.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from reliability.audit import audit
from reliability.conftest import Figures, NewDatabase
from reliability.harness import client, serving
from reliability.load import WriteLog, customers, load
from service.jobs import JobRow
from service.ledger.models import Statement

CLIENTS = 16
GRACE = 5


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_sigterm_under_load_finishes_or_rolls_back_what_is_in_flight(
    backend: str, new_database: NewDatabase, tmp_path: Path, figures: Figures
) -> None:
    url = await new_database(backend)
    log = WriteLog(prefix=f"shutdown-{backend}")
    options = ("--graceful-timeout", str(GRACE))
    async with serving(f"shutdown-{backend}", url, tmp_path, options=options) as server:
        async with client(server) as http:
            people = await customers(http, log, count=6)
            async with load(http, log, people, clients=CLIENTS):
                await asyncio.sleep(1.5)
                signalled_at = time.monotonic()
                server.process.send_signal(signal.SIGTERM)  # the master only; see above
                exit_code = await asyncio.to_thread(server.process.wait, GRACE + 10)
                stopped_after = time.monotonic() - signalled_at

    in_flight = [write for write in log.writes if write.started < signalled_at < write.finished]
    finished = sum(1 for write in in_flight if write.status > 0)
    result = await audit(url, log)
    figures("server exit after SIGTERM (s)", f"{stopped_after:.2f} (exit code {exit_code})")
    figures(
        "requests in flight at SIGTERM: answered / cut off",
        f"{finished} / {len(in_flight) - finished}",
    )
    figures("writes by outcome", dict(sorted(log.outcomes().items())))
    for name, value in result.figures().items():
        figures(name, value)

    assert exit_code == 0 and stopped_after < GRACE + 5
    assert result.held, "\n".join(result.problems[:20])
    assert result.unknown_applied == 0, "a write was committed but never answered"
    assert finished > 0, "no request was in flight at SIGTERM: the signal missed the load"


# Background jobs ---------------------------------------------------------------------------------

JOBS = 12
JOB_DELAY_STEP = 0.75  # delays 0, 0.75 ... 8.25 s: some end within Quart's 5 s wait, some cannot


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_sigterm_leaves_each_job_finished_or_pending(
    backend: str, workers: int, new_database: NewDatabase, tmp_path: Path, figures: Figures
) -> None:
    """Jobs in flight at SIGTERM either finish or stay pending; none is half applied, none lost.

    A statement's job writes its figures in one unit of work: "ready" with every
    figure, or "pending" with none. Quart waits up to 5 s for the running jobs
    when it shuts down, then cancels them, which rolls them back; the jobs the
    process still holds (cut off, or waiting for one of its 4 slots) are handed
    back to the outbox. With several workers Hypercorn's master terminates the
    others as soon as one has exited, so their jobs are cut off like a crash:
    rolled back too, their rows still leased until the lease runs out. Either
    way each pending statement's job is in the outbox, for the next process.
    """
    url = await new_database(backend)
    log = WriteLog(prefix=f"jobs-{backend}")
    asked: list[tuple[int, float]] = []
    options = ("--graceful-timeout", str(GRACE))
    target = "reliability.jobs_app:app"
    async with serving(
        f"jobs-{backend}-{workers}", url, tmp_path, workers=workers, options=options, target=target
    ) as server:
        async with client(server) as http:
            account = (await customers(http, log, count=1, accounts_each=1))[0].accounts[0]
            for number in range(JOBS):
                delay = number * JOB_DELAY_STEP
                response = await http.post(
                    f"/_reliability/accounts/{account}/slow-statements", json={"delay": delay}
                )
                assert response.status_code == 202, response.text
                asked.append((response.json()["id"], delay))
            signalled_at = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            exit_code = await asyncio.to_thread(server.process.wait, GRACE + 20)
            stopped_after = time.monotonic() - signalled_at

    stored = await _statements(url)
    outbox = await _jobs(url)
    outcomes: dict[str, list[float]] = {"ready": [], "pending": [], "broken": []}
    for statement_id, delay in asked:
        row = stored.get(statement_id)
        if row is None:
            outcomes["broken"].append(delay)  # acknowledged 202, yet not stored
        elif row["status"] == "ready" and None not in row.values():
            outcomes["ready"].append(delay)
        elif row["status"] == "pending" and _no_figures(row):
            outcomes["pending"].append(delay)
        else:
            outcomes["broken"].append(delay)
    pending = [
        statement_id for statement_id, _ in asked if stored[statement_id]["status"] == "pending"
    ]
    waiting = {statement_id: outbox.get(statement_id) for statement_id in pending}
    figures("server exit after SIGTERM (s)", f"{stopped_after:.2f} (exit code {exit_code})")
    figures("jobs by outcome (their delays, s)", outcomes)
    figures(
        "pending statements' jobs in the outbox, by state",
        dict(Counter(state or "MISSING" for state in waiting.values())),
    )

    assert exit_code == 0
    assert outcomes["broken"] == [], "a statement was lost or half written"
    # What was cut off is not lost: its job waits in the outbox, for the next process to run.
    assert all(state in ("scheduled", "queued", "running") for state in waiting.values()), waiting
    assert outcomes["pending"], "no job was still running at the end: the test proves nothing"
    if workers == 1:
        assert any(delay >= 1 for delay in outcomes["ready"]), "shutdown did not wait for a job"


async def _statements(url: str) -> dict[int, dict[str, object]]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(
                select(
                    Statement.id,
                    Statement.status,
                    Statement.opening_balance,
                    Statement.closing_balance,
                    Statement.total_in,
                    Statement.total_out,
                    Statement.entry_count,
                    Statement.completed_at,
                )
            )
            return {row.id: dict(row._mapping) for row in rows}
    finally:
        await engine.dispose()


async def _jobs(url: str) -> dict[int, str]:
    """The state of each statement's job in the outbox, by statement id."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(select(JobRow.args, JobRow.state))
            return {row.args[0]: row.state for row in rows if row.args}
    finally:
        await engine.dispose()


def _no_figures(row: dict[str, object]) -> bool:
    return all(value is None for name, value in row.items() if name not in ("id", "status"))
