"""Bulk import of deposits and withdrawals from CSV: all or nothing, in batches.

The file has a header line and the columns ``kind`` (``deposit`` or
``withdrawal``), ``amount`` (minor units, a positive integer) and, optionally,
``description``. Rows are validated and applied in order, keeping the running
balance; the first bad row stops the import with its line number, and the unit
of work it runs in writes nothing. Entries are inserted ``batch_size`` at a
time through the session (an executemany each), not one round trip per row,
and the next batch is parsed while the database takes the last one.
"""

from __future__ import annotations

import asyncio
import csv
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from operator import itemgetter
from typing import Annotated, Any, Literal, cast

from pydantic import Field, TypeAdapter, ValidationError
from sqlalchemy import Table, insert

from service.db import session
from service.ledger.models import Account, Entry, utcnow
from service.ledger.schemas import MAX_AMOUNT, MAX_BALANCE, Description

COLUMNS = ("kind", "amount", "description")
REQUIRED = frozenset(COLUMNS[:2])


class ImportFailed(Exception):
    """The file cannot be imported; nothing was written."""


Kind = Literal["deposit", "withdrawal"]
CsvAmount = Annotated[int, Field(gt=0, le=MAX_AMOUNT)]  # from text: "12" yes, "1.5" no
_Row = tuple[Kind, CsvAmount, Description]

# One call validates a whole batch of (kind, amount, description) rows.
_ROWS = TypeAdapter(list[_Row])


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
    reader = csv.reader(lines)
    columns = _columns(next(reader, []))
    width = len(columns)
    pick = _picker(columns)
    totals = _Totals(account.id, account.balance, utcnow())
    inserts = _Inserts(totals.account_id, totals.now, progress)
    raw: list[tuple[str, str, str]] = []
    numbers: list[int] = []
    try:
        for fields in reader:
            if len(fields) != width:
                if len(fields) > width:
                    await _apply(totals, raw, numbers, inserts)  # an earlier line may fail first
                    raise ImportFailed(f"line {reader.line_num}: more fields than the header names")
                fields += [""] * (width - len(fields))
            raw.append(pick(fields))
            numbers.append(reader.line_num)
            if len(raw) >= batch_size:
                await _apply(totals, raw, numbers, inserts)
        await _apply(totals, raw, numbers, inserts)
    finally:
        await inserts.finish()
    await account.update(balance=totals.balance)
    return Imported(totals.count, totals.deposited, totals.withdrawn, totals.balance)


def _picker(columns: list[str]) -> Callable[[list[str]], tuple[str, str, str]]:
    """Takes (kind, amount, description) out of a line's fields, in the header's order."""
    if "description" not in columns:
        kind, amount = columns.index("kind"), columns.index("amount")
        return lambda fields: (fields[kind], fields[amount], "")
    return itemgetter(*(columns.index(name) for name in COLUMNS))


def _columns(header: list[str]) -> list[str]:
    columns = [name.strip() for name in header]
    if not REQUIRED <= set(columns) <= set(COLUMNS) or len(set(columns)) != len(columns):
        raise ImportFailed(
            "line 1: the header must name the columns kind,amount[,description], "
            f"not {','.join(header)!r}"
        )
    return columns


@dataclass
class _Totals:
    account_id: int
    balance: int
    now: datetime
    count: int = 0
    deposited: int = 0
    withdrawn: int = 0


class _Inserts:
    """Inserts one batch while the next one is read and validated.

    The session's executemany waits on the database (SQLite's thread, or the
    network) while this task goes on parsing; a batch starts only once the one
    before it is done, so the session is never used by two tasks at a time.
    """

    def __init__(
        self, account_id: int, now: datetime, progress: Callable[[int], None] | None
    ) -> None:
        self._session = session()  # looked up here, in the unit of work's own task
        # What every row shares is bound once, not converted again for each row.
        self._statement = insert(cast(Table, Entry.__table__)).values(
            account_id=account_id, created_at=now
        )
        self._progress = progress
        self._pending: asyncio.Future[Any] | None = None
        self._size = 0

    async def start(self, entries: list[dict[str, Any]]) -> None:
        await self._wait()
        # A Core insert of the table, in the session's transaction: one executemany,
        # without the ORM's per-row bookkeeping for objects nobody will use.
        self._pending = asyncio.ensure_future(self._session.execute(self._statement, entries))
        self._size = len(entries)
        await asyncio.sleep(0)  # let it reach the database before parsing on

    async def finish(self) -> None:
        await self._wait()

    async def _wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            await pending
            if self._progress is not None:
                self._progress(self._size)


async def _apply(
    totals: _Totals,
    raw: list[tuple[str, str, str]],
    numbers: list[int],
    inserts: _Inserts,
) -> None:
    """Validate a batch in one call, apply it in order, insert it; then empty it."""
    if not raw:
        return
    try:
        rows, failure = _ROWS.validate_python(raw), None
    except ValidationError as error:
        first = min(int(item["loc"][0]) for item in error.errors())
        rows, failure = _ROWS.validate_python(raw[:first]), _problem(error, first, numbers[first])
    entries = []
    for (kind, amount, description), line in zip(rows, numbers, strict=False):
        if kind == "deposit":
            if totals.balance + amount > MAX_BALANCE:
                raise ImportFailed(
                    f"line {line}: the balance would exceed the maximum of {MAX_BALANCE}"
                )
            totals.balance += amount
            totals.deposited += amount
        else:
            if amount > totals.balance:
                raise ImportFailed(
                    f"line {line}: insufficient funds: withdrawing {amount} "
                    f"from a balance of {totals.balance}"
                )
            totals.balance -= amount
            totals.withdrawn += amount
            amount = -amount
        entries.append(
            {
                "amount": amount,
                "balance_after": totals.balance,
                "kind": kind,
                "description": description or None,
            }
        )
    if failure is not None:
        raise failure
    await inserts.start(entries)
    totals.count += len(entries)
    raw.clear()
    numbers.clear()


def _problem(error: ValidationError, index: int, line: int) -> ImportFailed:
    problems = "; ".join(
        f"{COLUMNS[int(item['loc'][1])]}: {item['msg']}"
        for item in error.errors(include_url=False)
        if item["loc"][0] == index
    )
    return ImportFailed(f"line {line}: {problems}")
