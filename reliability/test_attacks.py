"""The security review's three medium attacks, again, against a served process on both databases.

- **Idempotency after expiry.** A withdrawal with an ``Idempotency-Key``; its row aged past
  24 hours through a connection of the test's own; then 10 concurrent repeats; 8 rounds, the
  hourly prune running during every other one. Each round must move the money once: the
  number of double applications (entries beyond one a round) must be 0. Hypercorn with 2
  workers. The review saw the money move twice in 3 of 6 runs on PostgreSQL.
- **HTTP/2 rapid reset** (CVE-2023-44487) and **amplification** (registrations whose bodies
  are nothing but unknown keys): an attacker process (``reliability.attackers``) on the same
  machine, while a victim reads ``GET /accounts`` with a token of their own, one request after
  another. Hypercorn with 1 worker, which attacker and victim share. Rate limits are off:
  the bounds must hold by what a refused request costs, not by a limit the attacker could
  spread across addresses. The review saw the victim's p50 go from 7 ms to 1.3 s under
  rapid reset, and from 6 to 470 ms under two amplification loops.

Verdicts: 0 double applications; the victim's p50 at most 100 ms and p99 at most 500 ms
under each attack. The victim's figures before the attack are printed for comparison.
The attacker, the victim and the server share the machine's cores, as in the review.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select, update

from bench.harness import ROOT
from reliability.conftest import Figures, NewDatabase
from reliability.harness import client, serving
from reliability.load import Customer, WriteLog, customers
from service.db import make_engine, unit_of_work
from service.ledger.idempotency import KEY_LIFETIME
from service.ledger.maintenance import prune_idempotency_keys
from service.ledger.models import Entry, IdempotencyKey, utcnow

ROUNDS = 8
REPEATS = 10
ATTACK_SECONDS = 6.0
BASELINE_SECONDS = 2.0
P50_LIMIT_MS = 100.0
P99_LIMIT_MS = 500.0
BACKENDS = pytest.mark.parametrize("backend", ["sqlite", "postgresql"])


@BACKENDS
async def test_concurrent_repeats_of_an_expired_key_apply_once(
    backend: str, new_database: NewDatabase, tmp_path: Path, figures: Figures
) -> None:
    url = await new_database(backend)
    engine = make_engine(url)
    try:
        async with serving(f"expired-key-{backend}", url, tmp_path, workers=2) as server:
            async with client(server) as http:
                [mallory] = await customers(http, WriteLog("idempotency"), 1, accounts_each=1)
                account = mallory.accounts[0]
                path = f"/accounts/{account}/withdrawals"
                headers = {**mallory.headers, "Idempotency-Key": "once"}
                first = await http.post(path, json={"amount": 10}, headers=headers)
                assert first.status_code == 201
                statuses: list[int] = []
                for round_number in range(ROUNDS):
                    async with engine.begin() as connection:
                        aged = utcnow() - KEY_LIFETIME - timedelta(minutes=5)
                        await connection.execute(update(IdempotencyKey).values(created_at=aged))
                    pruning = (
                        [unit_of_work(bind=engine)(prune_idempotency_keys)()]
                        if round_number % 2
                        else []
                    )
                    repeats = [
                        http.post(path, json={"amount": 10}, headers=headers)
                        for _ in range(REPEATS)
                    ]
                    answers = await asyncio.gather(*pruning, *repeats)
                    statuses += [answer.status_code for answer in answers[len(pruning) :]]
        async with engine.connect() as connection:
            withdrawals = await connection.scalar(
                select(func.count()).select_from(Entry).where(Entry.account_id == account)
            )
    finally:
        await engine.dispose()

    doubles = int(withdrawals or 0) - 2 - ROUNDS  # the funding deposit, the first, a round each
    figures("rounds", f"{ROUNDS} of {REPEATS} concurrent repeats, the prune in every other")
    figures("answers", f"{statuses.count(201)} of {len(statuses)} answered 201")
    figures("double applications", doubles)
    assert statuses == [201] * (ROUNDS * REPEATS)
    assert doubles == 0


async def _victim(http: httpx.AsyncClient, customer: Customer, seconds: float) -> list[float]:
    """``GET /accounts`` one after another for ``seconds``: each latency, in ms."""
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.monotonic()
        response = await http.get("/accounts", headers=customer.headers)
        latencies.append((time.monotonic() - started) * 1000)
        assert response.status_code == 200, response.text
    return latencies


def _percentiles(latencies: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return statistics.median(latencies), cuts[98]


async def _attack(kind: str, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "reliability.attackers",
        kind,
        *args,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )


async def _stop(attacker: asyncio.subprocess.Process) -> str:
    attacker.send_signal(signal.SIGTERM)
    output, _ = await asyncio.wait_for(attacker.communicate(), 15)
    return ", ".join(output.decode(errors="replace").strip().splitlines()[-6:])


@BACKENDS
@pytest.mark.parametrize("attack", ["rapid-reset", "amplification"])
async def test_one_client_cannot_slow_another(
    backend: str, attack: str, new_database: NewDatabase, tmp_path: Path, figures: Figures
) -> None:
    url = await new_database(backend)
    async with serving(f"{attack}-{backend}", url, tmp_path, workers=1) as server:
        async with client(server, connections=1) as http:
            victim, mallory = await customers(http, WriteLog(attack), 2, accounts_each=1)
            await _victim(http, victim, 0.5)  # warm: the pool, the statements, the caches
            before = await _victim(http, victim, BASELINE_SECONDS)
            token = mallory.headers["Authorization"].removeprefix("Bearer ")
            attacker = await _attack(attack, str(server.port), token)
            try:
                await asyncio.sleep(0.5)  # under way
                during = await _victim(http, victim, ATTACK_SECONDS)
            finally:
                attempts = await _stop(attacker)
            alive = await http.get("/healthz")

    p50, p99 = _percentiles(during)
    base50, base99 = _percentiles(before)
    figures("victim before the attack", f"p50 {base50:.1f} ms, p99 {base99:.1f} ms")
    figures("victim under the attack", f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, {len(during)} reads")
    figures("attacker", attempts)
    assert alive.status_code == 200
    assert p50 <= P50_LIMIT_MS and p99 <= P99_LIMIT_MS
