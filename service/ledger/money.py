"""Moving money. Each operation locks the accounts it changes, so no concurrency creates or
destroys money: on PostgreSQL with row locks taken in id order (two opposite transfers cannot
deadlock), on SQLite by the write lock taken at BEGIN.

A deposit or a withdrawal locks, checks and changes its account in one statement,
``UPDATE ... WHERE <the rule> RETURNING``: the row lock is the same one ``SELECT ... FOR
UPDATE`` takes, a round trip fewer. Only when it changes nothing (not the caller's account,
or the rule refused) does the account get read, under that lock, to say which.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from quart import has_request_context
from sqlalchemy import ColumnElement, Row, Table, Update, bindparam, insert, select, update

from service.db import on_commit, session
from service.errors import ApiError
from service.ledger.models import Account, Entry, Transfer, utcnow
from service.ledger.schemas import MAX_BALANCE
from service.logs import MONEY
from service.security import request_id

Operation = Callable[[int, int, int, "str | None"], Awaitable["Row[Any]"]]
"""A movement of money in or out of one of the caller's accounts: ``deposit`` or ``withdraw``,
called with the user's id, the account's id, the amount and the description."""


def _not_found() -> ApiError:
    return ApiError(404, "not_found", "No such account.")


async def owned_account(user_id: int, account_id: int, *, lock: bool = False) -> Row[Any]:
    """The caller's account (its row), or 404 - also for another user's, never revealed."""
    if not 0 < account_id < 2**31:  # beyond the id column's range: cannot exist
        raise _not_found()
    statement = _OWNED_LOCKED if lock else _OWNED
    values = {"account": account_id, "owner": user_id}
    account: Row[Any] | None = (await session.execute(statement, values)).one_or_none()
    if account is None:
        raise _not_found()
    return account


def _log_on_commit(event: str, **fields: Any) -> None:
    """Log a movement once it is committed (never one that was rolled back); no token."""
    if has_request_context():
        fields["request_id"] = request_id()
    on_commit(lambda: MONEY.info(event, extra={"event": event, **fields}))


async def deposit(user_id: int, account_id: int, amount: int, description: str | None) -> Row[Any]:
    """Add ``amount`` to the caller's account; its new statement line."""
    account = await _change(_DEPOSIT, user_id, account_id, amount, limit=MAX_BALANCE - amount)
    if account is None:  # not the caller's (404), or no room (422); else room was just made
        _require_room(await owned_account(user_id, account_id, lock=True), amount)
        account = await _change(_MOVE, user_id, account_id, amount)
    return await _entry(user_id, account, amount, "deposit", description)


async def withdraw(user_id: int, account_id: int, amount: int, description: str | None) -> Row[Any]:
    """Take ``amount`` from the caller's account; its new statement line."""
    account = await _change(_WITHDRAW, user_id, account_id, -amount, limit=amount)
    if account is None:  # not the caller's (404), or not enough (422); else money just came
        _require_funds(await owned_account(user_id, account_id, lock=True), amount)
        account = await _change(_MOVE, user_id, account_id, -amount)
    return await _entry(user_id, account, -amount, "withdrawal", description)


# Core statements, built once, on the hot paths: no ORM unit of work for one row written once.
_ACCOUNTS: Table = Account.__table__  # type: ignore[assignment]
_ENTRIES: Table = Entry.__table__  # type: ignore[assignment]


def _moving(*rule: ColumnElement[bool]) -> Update:
    """Lock the caller's account and add ``delta`` to its balance, if ``rule`` holds."""
    accounts = _ACCOUNTS.c
    return (
        update(_ACCOUNTS)
        .where(accounts.id == bindparam("account"), accounts.user_id == bindparam("owner"), *rule)
        .values(balance=accounts.balance + bindparam("delta"))
        .returning(accounts.id, accounts.balance, accounts.currency)
    )


_DEPOSIT = _moving(_ACCOUNTS.c.balance <= bindparam("limit"))  # limit: MAX_BALANCE - amount
_WITHDRAW = _moving(_ACCOUNTS.c.balance >= bindparam("limit"))  # limit: the amount
_MOVE = _moving()  # under a lock already held, the rule checked
_LINE = insert(_ENTRIES).returning(*_ENTRIES.c)
_LINES = insert(_ENTRIES)
_OWNED = select(_ACCOUNTS).where(
    _ACCOUNTS.c.id == bindparam("account"), _ACCOUNTS.c.user_id == bindparam("owner")
)
_OWNED_LOCKED = _OWNED.with_for_update()
_BOTH_LOCKED = (
    select(_ACCOUNTS)
    .where(
        _ACCOUNTS.c.id.in_(bindparam("ids", expanding=True)),
        _ACCOUNTS.c.user_id == bindparam("owner"),
    )
    .order_by(_ACCOUNTS.c.id)
    .with_for_update()
)
_SET_BALANCE = (
    update(_ACCOUNTS)
    .where(_ACCOUNTS.c.id == bindparam("account"))
    .values(balance=bindparam("balance"))
)
_TRANSFERS: Table = Transfer.__table__  # type: ignore[assignment]
_TRANSFER = insert(_TRANSFERS).returning(*_TRANSFERS.c)


async def _change(
    statement: Update, user_id: int, account_id: int, delta: int, **limit: int
) -> Row[Any] | None:
    """The account's id, new balance and currency, or None if ``statement`` changed nothing.

    An ``Account`` loaded earlier in the unit of work keeps its old balance: read
    it again (``with_for_update()`` does) before using it.
    """
    if not 0 < account_id < 2**31:
        raise _not_found()
    values = {"account": account_id, "owner": user_id, "delta": delta, **limit}
    changed: Row[Any] | None = (await session.execute(statement, values)).one_or_none()
    return changed


async def _entry(
    user_id: int, account: Row[Any] | None, amount: int, kind: str, description: str | None
) -> Row[Any]:
    """The statement line of a movement whose new balance ``account`` has; logged on commit."""
    assert account is not None  # locked by the caller, so changed
    values = _line_values(account.id, amount, account.balance, kind, description, utcnow())
    entry = (await session.execute(_LINE, values)).one()
    _log_on_commit(
        kind,
        user_id=user_id,
        account_id=account.id,
        entry_id=entry.id,
        amount=abs(amount),
        currency=account.currency,
    )
    return entry


async def transfer(
    user_id: int, from_id: int, to_id: int, amount: int, description: str | None
) -> Row[Any]:
    """Move ``amount`` between two of the caller's accounts; the transfer's row."""
    if from_id == to_id:
        raise ApiError(422, "same_account", "A transfer needs two different accounts.")
    if not (0 < from_id < 2**31 and 0 < to_id < 2**31):
        raise _not_found()
    values = {"ids": [from_id, to_id], "owner": user_id}
    locked = (await session.execute(_BOTH_LOCKED, values)).all()  # in id order
    accounts = {account.id: account for account in locked}
    if from_id not in accounts or to_id not in accounts:
        raise _not_found()
    source, target = accounts[from_id], accounts[to_id]
    if source.currency != target.currency:
        raise ApiError(
            422,
            "currency_mismatch",
            f"Cannot transfer from {source.currency} to {target.currency}.",
        )
    _require_funds(source, amount)
    _require_room(target, amount)
    balances = [
        {"account": from_id, "balance": source.balance - amount},
        {"account": to_id, "balance": target.balance + amount},
    ]
    await session.execute(_SET_BALANCE, balances)  # one executemany: one round trip
    now = utcnow()
    record = (
        await session.execute(
            _TRANSFER,
            {
                "user_id": user_id,
                "from_account_id": from_id,
                "to_account_id": to_id,
                "amount": amount,
                "description": description,
                "created_at": now,
            },
        )
    ).one()
    lines = [
        _line_values(from_id, -amount, balances[0]["balance"], "transfer_out", description, now),
        _line_values(to_id, amount, balances[1]["balance"], "transfer_in", description, now),
    ]
    for line in lines:
        line["transfer_id"] = record.id
    await session.execute(_LINES, lines)
    _log_on_commit(
        "transfer",
        user_id=user_id,
        transfer_id=record.id,
        from_account_id=from_id,
        to_account_id=to_id,
        amount=amount,
        currency=source.currency,
    )
    return record


def _line_values(
    account_id: int,
    amount: int,
    balance_after: int,
    kind: str,
    description: str | None,
    created_at: datetime,
) -> dict[str, Any]:
    return {
        "account_id": account_id,
        "amount": amount,
        "balance_after": balance_after,
        "kind": kind,
        "description": description,
        "transfer_id": None,
        "created_at": created_at,
    }


def _require_funds(account: Row[Any], amount: int) -> None:
    if account.balance < amount:
        raise ApiError(
            422,
            "insufficient_funds",
            f"The balance of account {account.id} is {account.balance}, less than {amount}.",
        )


def _require_room(account: Row[Any], amount: int) -> None:
    if account.balance + amount > MAX_BALANCE:
        raise ApiError(
            422,
            "balance_limit_exceeded",
            f"The balance of account {account.id} would exceed the maximum of {MAX_BALANCE}.",
        )
