"""Bulk import of deposits and withdrawals from CSV: all or nothing, in batches.

The file has a header line and the columns ``kind`` (``deposit`` or
``withdrawal``), ``amount`` (minor units, a positive integer) and, optionally,
``description``. Rows are validated and applied in order, keeping the running
balance; the first bad row stops the import with its line number, and the unit
of work it runs in writes nothing. Entries are inserted ``batch_size`` at a
time through the session (an executemany each), not one round trip per row.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import insert

from service.db import session
from service.ledger.models import Account, Entry, utcnow
from service.ledger.schemas import MAX_AMOUNT, Description

COLUMNS = ("kind", "amount", "description")
REQUIRED = frozenset(COLUMNS[:2])


class ImportFailed(Exception):
    """The file cannot be imported; nothing was written."""


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["deposit", "withdrawal"]
    amount: Annotated[int, Field(gt=0, le=MAX_AMOUNT)]  # from text: "12" yes, "1.5" no
    description: Description | None = None


@dataclass(frozen=True)
class Imported:
    entries: int
    deposited: int
    withdrawn: int
    balance: int


async def import_entries(
    lines: Iterable[str],
    account_id: int,
    *,
    batch_size: int = 1000,
    progress: Callable[[int], None] | None = None,
) -> Imported:
    """Apply the CSV ``lines`` to the account; raise ``ImportFailed`` naming the bad line."""
    account = await Account.query.filter_by(id=account_id).with_for_update().first()
    if account is None:
        raise ImportFailed(f"there is no account {account_id}")
    reader = csv.DictReader(lines)
    columns = set(reader.fieldnames or ())
    if not REQUIRED <= columns or not columns <= set(COLUMNS):
        raise ImportFailed(
            f"line 1: the header must name the columns kind,amount[,description], "
            f"not {','.join(reader.fieldnames or ())!r}"
        )
    balance, deposited, withdrawn, count = account.balance, 0, 0, 0
    now = utcnow()
    batch: list[dict[str, Any]] = []
    for fields in reader:
        row = _parse(fields, reader.line_num)
        if row.kind == "deposit":
            balance += row.amount
            deposited += row.amount
        else:
            if row.amount > balance:
                raise ImportFailed(
                    f"line {reader.line_num}: insufficient funds: withdrawing {row.amount} "
                    f"from a balance of {balance}"
                )
            balance -= row.amount
            withdrawn += row.amount
        batch.append(
            {
                "account_id": account.id,
                "amount": row.amount if row.kind == "deposit" else -row.amount,
                "balance_after": balance,
                "kind": row.kind,
                "description": row.description,
                "created_at": now,
            }
        )
        count += 1
        if len(batch) >= batch_size:
            await _insert(batch, progress)
    if batch:
        await _insert(batch, progress)
    await account.update(balance=balance)
    return Imported(count, deposited, withdrawn, balance)


def _parse(fields: dict[str | Any, Any], line: int) -> _Row:
    if None in fields:
        raise ImportFailed(f"line {line}: more fields than the header names")
    values = {name: value for name, value in fields.items() if value not in ("", None)}
    try:
        return _Row.model_validate(values)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}"
            for item in error.errors(include_url=False)
        )
        raise ImportFailed(f"line {line}: {problems}") from None


async def _insert(batch: list[dict[str, Any]], progress: Callable[[int], None] | None) -> None:
    await session.execute(insert(Entry), batch)
    if progress is not None:
        progress(len(batch))
    batch.clear()
