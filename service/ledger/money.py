"""Moving money. Each operation locks the accounts it changes, so no concurrency creates or
destroys money: on PostgreSQL with ``SELECT ... FOR UPDATE`` in id order (two opposite
transfers cannot deadlock), on SQLite by the write lock taken at BEGIN.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from quart import has_request_context

from service.db import on_commit
from service.errors import ApiError
from service.ledger.models import Account, Entry, Transfer
from service.ledger.schemas import MAX_BALANCE
from service.logs import MONEY
from service.security import request_id

Operation = Callable[[Account, int, "str | None"], Awaitable[Entry]]
"""A movement of money in or out of one account: ``deposit`` or ``withdraw``."""


def _not_found() -> ApiError:
    return ApiError(404, "not_found", "No such account.")


async def owned_account(user_id: int, account_id: int, *, lock: bool = False) -> Account:
    """The caller's account, or 404 - also for another user's, which must not be revealed."""
    if not 0 < account_id < 2**31:  # beyond the id column's range: cannot exist
        raise _not_found()
    query = Account.query.filter_by(id=account_id, user_id=user_id)
    account = await (query.with_for_update() if lock else query).first()
    if account is None:
        raise _not_found()
    return account


def _log_on_commit(event: str, **fields: Any) -> None:
    """Log a movement once it is committed (never one that was rolled back); no token."""
    if has_request_context():
        fields["request_id"] = request_id()
    on_commit(lambda: MONEY.info(event, extra={"event": event, **fields}))


async def deposit(account: Account, amount: int, description: str | None) -> Entry:
    _require_room(account, amount)
    entry = await _post(account, amount, "deposit", description)
    _log_on_commit(
        "deposit",
        user_id=account.user_id,
        account_id=account.id,
        entry_id=entry.id,
        amount=amount,
        currency=account.currency,
    )
    return entry


async def withdraw(account: Account, amount: int, description: str | None) -> Entry:
    _require_funds(account, amount)
    entry = await _post(account, -amount, "withdrawal", description)
    _log_on_commit(
        "withdrawal",
        user_id=account.user_id,
        account_id=account.id,
        entry_id=entry.id,
        amount=amount,
        currency=account.currency,
    )
    return entry


async def transfer(
    user_id: int, from_id: int, to_id: int, amount: int, description: str | None
) -> Transfer:
    if from_id == to_id:
        raise ApiError(422, "same_account", "A transfer needs two different accounts.")
    locked = await (
        Account.query.where(Account.id.in_([from_id, to_id]), Account.user_id == user_id)
        .order_by(Account.id)
        .with_for_update()
        .all()
    )
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
    record = await Transfer.create(
        user_id=user_id,
        from_account_id=from_id,
        to_account_id=to_id,
        amount=amount,
        description=description,
    )
    await _post(source, -amount, "transfer_out", description, transfer_id=record.id)
    await _post(target, amount, "transfer_in", description, transfer_id=record.id)
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


def _require_funds(account: Account, amount: int) -> None:
    if account.balance < amount:
        raise ApiError(
            422,
            "insufficient_funds",
            f"The balance of account {account.id} is {account.balance}, less than {amount}.",
        )


def _require_room(account: Account, amount: int) -> None:
    if account.balance + amount > MAX_BALANCE:
        raise ApiError(
            422,
            "balance_limit_exceeded",
            f"The balance of account {account.id} would exceed the maximum of {MAX_BALANCE}.",
        )


async def _post(
    account: Account,
    amount: int,
    kind: str,
    description: str | None,
    *,
    transfer_id: int | None = None,
) -> Entry:
    account.balance += amount
    return await Entry.create(
        account_id=account.id,
        amount=amount,
        balance_after=account.balance,
        kind=kind,
        description=description,
        transfer_id=transfer_id,
    )
