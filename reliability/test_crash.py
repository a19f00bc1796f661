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
import time
from dataclasses import replace
from pathlib import Path

import pytest

from reliability.audit import audit
from reliability.conftest import Figures, NewDatabase
from reliability.harness import client, serving
from reliability.load import WriteLog, customers, load, send
from reliability.statements import (
    StatementLog,
    asking,
    customers_with_a_year,
    judge,
    statements,
    wait_until_done,
)

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


# Jobs ---------------------------------------------------------------------------------------------

STATEMENT_CLIENTS = 16
RECOVERY_LIMIT = 10.0
"""Seconds after the last restart by which every statement must be ready."""


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_every_statement_answered_202_is_ready_soon_after_sigkill_and_restart(
    backend: str, workers: int, new_database: NewDatabase, tmp_path: Path, figures: Figures
) -> None:
    """A 202 is a promise: the job is in the outbox, committed with the statement.

    16 clients ask for statements while the whole server is killed three times and
    restarted. Jobs in flight, and jobs committed but not yet started, die with it;
    after the last restart, the sweepers deliver them again once their reservation
    or lease has run out (5 s), and every statement is ready, with the figures
    recomputed here from the entries.
    """
    url = await new_database(backend)
    log = StatementLog()
    people = None
    pending_at_kills = []
    for round_number, kill_after in enumerate(KILL_POINTS):
        name = f"jobs-crash-{backend}-{workers}-{round_number}"
        async with serving(name, url, tmp_path, workers=workers) as server:
            async with client(server) as http:
                if people is None:
                    people = await customers_with_a_year(http, url, f"jobs-{backend}-{workers}")
                async with asking(http, log, people, clients=STATEMENT_CLIENTS, seed=round_number):
                    await asyncio.sleep(kill_after)
                    server.signal(signal.SIGKILL)
            assert server.process.wait(timeout=10) == -signal.SIGKILL
        stored = await statements(url)
        pending_at_kills.append(sum(1 for row in stored.values() if row.status == "pending"))

    restarted_at = time.monotonic()
    async with serving(f"jobs-crash-{backend}-{workers}-after", url, tmp_path, workers=workers):
        ready_after, still_pending = await wait_until_done(
            url, within=RECOVERY_LIMIT, since=restarted_at
        )
    problems, by_status = await judge(url, log)

    figures("statement requests by outcome", log.outcomes())
    figures("pending right after each kill", pending_at_kills)
    figures(
        "all ready after the last restart (s)",
        "never" if ready_after is None else f"{ready_after:.2f} (limit {RECOVERY_LIMIT:.0f})",
    )
    figures("stored statements by status", by_status)
    assert ready_after is not None, f"{still_pending} statements still pending"
    assert problems == [], "\n".join(problems[:20])
    assert len(log.accepted()) > 50, "too little load to prove anything"
    assert pending_at_kills[-1] > 0, "no job was cut off by the last kill: it proves nothing"
