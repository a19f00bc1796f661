"""Crash durability: the server is killed with SIGKILL mid-load, restarted, and audited.

Concurrent clients deposit and transfer against Hypercorn (2 workers). At each
kill point the whole process group (master and workers) gets SIGKILL, with
requests in every stage of their life: being read, in the handler, committing,
being answered. The server is restarted on the same database and the load goes
on, until the next kill point. At the end the clients' log is compared with the
database (``reliability.audit``): every 2xx stored, every 4xx/5xx absent, every
write that got no answer applied whole or not at all, and the invariants held.
"""

from __future__ import annotations

import asyncio
import signal
from dataclasses import replace
from pathlib import Path

import pytest

from reliability.audit import audit
from reliability.conftest import Figures, NewDatabase
from reliability.harness import client, serving
from reliability.load import WriteLog, customers, load, send

CLIENTS = 16
KILL_POINTS = (0.4, 1.3, 2.7)
"""Seconds of load before each SIGKILL: early, while the first writes queue; in the thick of it."""


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_acknowledged_writes_survive_sigkill_and_refused_ones_leave_no_trace(
    backend: str, new_database: NewDatabase, tmp_path: Path, figures: Figures
) -> None:
    url = await new_database(backend)
    log = WriteLog(prefix=f"crash-{backend}")
    people = None
    for round_number, kill_after in enumerate(KILL_POINTS):
        async with serving(f"crash-{backend}-{round_number}", url, tmp_path) as server:
            async with client(server) as http:
                if people is None:
                    people = await customers(http, log, count=6)
                async with load(http, log, people, clients=CLIENTS, seed=round_number * 100):
                    await asyncio.sleep(kill_after)
                    server.signal(signal.SIGKILL)
            assert server.process.wait(timeout=10) == -signal.SIGKILL

    assert people is not None
    async with serving(f"crash-{backend}-after", url, tmp_path) as server:
        async with client(server) as http:
            after = await send(http, log, people[0], "deposit", 1, (people[0].accounts[0],))
    assert after.status == 201, "the restarted server should take writes again"

    result = await audit(url, log)
    outcomes = log.outcomes()
    figures("kill points (s of load before SIGKILL)", ", ".join(map(str, KILL_POINTS)))
    figures("writes by outcome", dict(sorted(outcomes.items())))
    for name, value in result.figures().items():
        figures(name, value)
    assert result.held, "\n".join(result.problems[:20])
    # The audit has teeth: the same database, with one acknowledged write said to be refused.
    tampered = WriteLog(log.prefix, [replace(write) for write in log.writes])
    next(write for write in tampered.writes if write.status == 201).status = 503
    assert len((await audit(url, tampered)).problems) == 1
    assert outcomes["2xx"] > 100 and outcomes["4xx"] > 0, "too little load to prove anything"
    assert outcomes["no answer"] > 0, "no request was cut off by a kill: the kills missed the load"
