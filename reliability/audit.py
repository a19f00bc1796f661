"""Compare the clients' log with what the database holds, through a connection of its own.

The promise under test: a write answered 2xx is stored, exactly as answered; a
write answered 4xx/5xx, or never sent, is not; a write that got no answer may
be either, but whole. Each write claims its ``Idempotency-Key`` in its own
transaction, so the key's row is present exactly when the write was committed.
All-or-nothing is then checked from the other side: every stored entry and
transfer must belong to a stored key, and every transfer must have both of its
entries. Finally the ledger's invariants (``bench/ledger_load.py``): every
balance is the sum of its entries and never negative, and the total is what was
deposited.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from bench.ledger_load import invariants
from reliability.load import NO_ANSWER, NOT_SENT, Write, WriteLog
from service.ledger.models import Entry, IdempotencyKey, Transfer

__all__ = ["Audit", "audit"]


@dataclass
class Audit:
    """What the comparison found: ``problems`` is empty when the promise held."""

    problems: list[str] = field(default_factory=list)
    acknowledged: int = 0
    refused: int = 0
    unknown_applied: int = 0
    unknown_not_applied: int = 0
    invariants: str = ""

    @property
    def held(self) -> bool:
        return not self.problems

    def figures(self) -> dict[str, object]:
        return {
            "acknowledged (2xx) and stored": self.acknowledged,
            "refused (4xx/5xx/not sent) and absent": self.refused,
            "no answer: applied whole / not applied": (
                f"{self.unknown_applied} / {self.unknown_not_applied}"
            ),
            "invariants": self.invariants,
        }


async def audit(url: str, log: WriteLog) -> Audit:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            keys = {
                (row.user_id, row.key): row
                for row in await connection.execute(
                    select(IdempotencyKey).where(IdempotencyKey.key.startswith(f"{log.prefix}-"))
                )
            }
            entries = list(await connection.execute(select(Entry)))
            transfers = {row.id: row for row in await connection.execute(select(Transfer))}
    finally:
        await engine.dispose()

    result = Audit()
    stored_deposits: set[int] = set()
    stored_transfers: set[int] = set()
    deposited = 0
    entries_by_id = {entry.id: entry for entry in entries}
    for write in log.writes:
        row = keys.pop((write.user_id, write.key), None)
        applied = None if row is None else json.loads(row.response_body)
        if applied is not None:
            if write.kind == "deposit":
                stored_deposits.add(applied["id"])
                deposited += write.amount
            else:
                stored_transfers.add(applied["id"])
        _judge(write, applied, result)
        if applied is not None:
            _check_stored(write, applied, entries_by_id, transfers, result)
    for user_id, key in keys:
        result.problems.append(f"stored key {key} (user {user_id}) matches no write of the log")

    for entry in entries:
        owned = entry.id in stored_deposits or entry.transfer_id in stored_transfers
        if not owned:
            result.problems.append(f"entry {entry.id} belongs to no acknowledged-or-stored write")
    halves_of: dict[int, list[tuple[int, int]]] = {}
    for entry in entries:
        if entry.transfer_id is not None:
            halves_of.setdefault(entry.transfer_id, []).append((entry.account_id, entry.amount))
    for transfer_id, transfer in transfers.items():
        halves = sorted(halves_of.get(transfer_id, []))
        whole = sorted(
            [
                (transfer.from_account_id, -transfer.amount),
                (transfer.to_account_id, transfer.amount),
            ]
        )
        if halves != whole:
            result.problems.append(f"transfer {transfer_id} is half applied: entries {halves}")

    held, result.invariants = await invariants(url, deposited)
    if not held:
        result.problems.append(f"invariants broken: {result.invariants}")
    return result


def _judge(write: Write, applied: dict[str, Any] | None, result: Audit) -> None:
    if 200 <= write.status < 300:
        if applied is None:
            result.problems.append(f"LOST: {write.key} was answered {write.status} but not stored")
        elif write.body != applied:
            result.problems.append(f"{write.key} stored {applied}, answered {write.body}")
        else:
            result.acknowledged += 1
    elif write.status == NO_ANSWER:
        if applied is None:
            result.unknown_not_applied += 1
        else:
            result.unknown_applied += 1
    elif applied is not None:
        answer = "never sent" if write.status == NOT_SENT else f"answered {write.status}"
        result.problems.append(f"{write.key} was {answer}, yet stored: {applied}")
    else:
        result.refused += 1


def _check_stored(
    write: Write,
    applied: dict[str, Any],
    entries: dict[int, Any],
    transfers: dict[int, Any],
    result: Audit,
) -> None:
    """The stored key's answer points at rows that are there and say what was asked."""
    if write.kind == "deposit":
        entry = entries.get(applied["id"])
        if entry is None or (entry.account_id, entry.amount) != (write.accounts[0], write.amount):
            result.problems.append(f"{write.key}: deposit entry {applied['id']} missing or wrong")
        return
    transfer = transfers.get(applied["id"])
    asked = (write.accounts[0], write.accounts[1], write.amount)
    if (
        transfer is None
        or (
            transfer.from_account_id,
            transfer.to_account_id,
            transfer.amount,
        )
        != asked
    ):
        result.problems.append(f"{write.key}: transfer {applied['id']} missing or wrong")
