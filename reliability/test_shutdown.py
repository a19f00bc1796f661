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
from pathlib import Path

import pytest

from reliability.audit import audit
from reliability.conftest import Figures, NewDatabase
from reliability.harness import client, serving
from reliability.load import WriteLog, customers, load

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


# Background jobs (issue 4) --------------------------------------------------------------------
# When jobs exist, SIGTERM must leave each one either finished (its effects committed) or still
# pending (nothing of it applied, picked up again after the restart). That test goes here: enqueue
# jobs under load, SIGTERM the worker, then compare the job table with the ledger like the audit
# above does for requests.


@pytest.mark.skip(reason="background jobs do not exist yet (issue 4): jobs finish or stay pending")
def test_sigterm_leaves_each_job_finished_or_pending() -> None:
    raise NotImplementedError
