"""The ledger's JSON API. Handlers use only ``service.db``: models and queries, no session."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, request
from quart_schema import (
    security_scheme,
    validate_querystring,
    validate_request,
    validate_response,
)
from sqlalchemy.exc import IntegrityError

from service.errors import ApiError
from service.ledger import money
from service.ledger.auth import authenticate, current_user, new_token
from service.ledger.idempotency import idempotent
from service.ledger.models import Account, Entry, Statement, User
from service.ledger.pagination import decode_cursor, keyset_page
from service.ledger.schemas import (
    AccountOut,
    AccountPage,
    EntryOut,
    EntryPage,
    Movement,
    NewAccount,
    NewStatement,
    NewTransfer,
    NewUser,
    NewUserOut,
    PageQuery,
    StatementOut,
    TransferOut,
    UserOut,
)
from service.ledger.statements import request_statement, statement_out

api = Blueprint("ledger", __name__)

Reply = tuple[dict[str, Any], int, dict[str, str]]


@api.before_request
async def _authenticate() -> None:
    if request.endpoint != "ledger.create_user":
        await authenticate()


def _email_taken() -> ApiError:
    return ApiError(409, "email_taken", "That email address is already in use.")


@api.post("/users")
@security_scheme([])  # registering needs no token
@validate_request(NewUser)
@validate_response(NewUserOut, 201)
async def create_user(data: NewUser) -> tuple[NewUserOut, int]:
    """Create a user and its API token, shown this once."""
    email_key = data.email.lower()
    if await User.query.filter_by(email_key=email_key).first() is not None:
        raise _email_taken()
    token, token_hash = new_token()
    try:
        user = await User.create(
            name=data.name, email=data.email, email_key=email_key, token_hash=token_hash
        )
    except IntegrityError:  # the same email, registered concurrently
        raise _email_taken() from None
    out = UserOut.model_validate(user, from_attributes=True)
    return NewUserOut(**out.model_dump(), token=token), 201


@api.get("/users/me")
@validate_response(UserOut)
async def me() -> UserOut:
    return UserOut.model_validate(current_user(), from_attributes=True)


@api.post("/accounts")
@validate_request(NewAccount)
@validate_response(AccountOut, 201)
async def create_account(data: NewAccount) -> tuple[AccountOut, int]:
    account = await Account.create(
        user_id=current_user().id, name=data.name, currency=data.currency
    )
    return AccountOut.model_validate(account, from_attributes=True), 201


@api.get("/accounts")
@validate_querystring(PageQuery)
@validate_response(AccountPage)
async def list_accounts(query_args: PageQuery) -> AccountPage:
    """The caller's accounts, oldest first."""
    query = Account.query.filter_by(user_id=current_user().id).order_by(Account.id)
    if query_args.cursor is not None:
        query = query.where(Account.id > decode_cursor(query_args.cursor))
    page, next_cursor = await keyset_page(query, query_args.limit)
    return AccountPage(
        items=[AccountOut.model_validate(row, from_attributes=True) for row in page],
        next_cursor=next_cursor,
    )


@api.get("/accounts/<int:account_id>")
@validate_response(AccountOut)
async def get_account(account_id: int) -> AccountOut:
    account = await money.owned_account(current_user().id, account_id)
    return AccountOut.model_validate(account, from_attributes=True)


@api.post("/accounts/<int:account_id>/deposits")
@validate_request(Movement)
@validate_response(EntryOut, 201)
async def create_deposit(account_id: int, data: Movement) -> Reply:
    return await _move(money.deposit, account_id, data)


@api.post("/accounts/<int:account_id>/withdrawals")
@validate_request(Movement)
@validate_response(EntryOut, 201)
async def create_withdrawal(account_id: int, data: Movement) -> Reply:
    return await _move(money.withdraw, account_id, data)


async def _move(operation: money.Operation, account_id: int, data: Movement) -> Reply:
    user_id = current_user().id

    async def work() -> tuple[dict[str, Any], int]:
        account = await money.owned_account(user_id, account_id, lock=True)
        entry = await operation(account, data.amount, data.description)
        return EntryOut.model_validate(entry, from_attributes=True).model_dump(mode="json"), 201

    return await idempotent(user_id, work)


@api.get("/accounts/<int:account_id>/entries")
@validate_querystring(PageQuery)
@validate_response(EntryPage)
async def list_entries(account_id: int, query_args: PageQuery) -> EntryPage:
    """The account's entries, newest first; the cursor continues below the last one shown."""
    await money.owned_account(current_user().id, account_id)
    query = Entry.query.filter_by(account_id=account_id).order_by(Entry.id.desc())
    if query_args.cursor is not None:
        query = query.where(Entry.id < decode_cursor(query_args.cursor))
    page, next_cursor = await keyset_page(query, query_args.limit)
    return EntryPage(
        items=[EntryOut.model_validate(row, from_attributes=True) for row in page],
        next_cursor=next_cursor,
    )


@api.post("/transfers")
@validate_request(NewTransfer)
@validate_response(TransferOut, 201)
async def create_transfer(data: NewTransfer) -> Reply:
    user_id = current_user().id

    async def work() -> tuple[dict[str, Any], int]:
        record = await money.transfer(
            user_id, data.from_account_id, data.to_account_id, data.amount, data.description
        )
        return TransferOut.model_validate(record, from_attributes=True).model_dump(mode="json"), 201

    return await idempotent(user_id, work)


@api.post("/accounts/<int:account_id>/statements")
@validate_request(NewStatement)
@validate_response(StatementOut, 202)
async def create_statement(account_id: int, data: NewStatement) -> tuple[StatementOut, int]:
    """Ask for a statement of the period; a job computes it once this request has committed."""
    user_id = current_user().id
    account = await money.owned_account(user_id, account_id)
    statement = await request_statement(user_id, account.id, data.from_, data.to)
    return statement_out(statement), 202


@api.get("/statements/<int:statement_id>")
@validate_response(StatementOut)
async def get_statement(statement_id: int) -> StatementOut:
    """A statement: ``pending``, ``ready`` with its figures, or ``failed`` with a reason."""
    statement = None
    if 0 < statement_id < 2**31:
        statement = await Statement.query.filter_by(
            id=statement_id, user_id=current_user().id
        ).first()
    if statement is None:
        raise ApiError(404, "not_found", "No such statement.")
    return statement_out(statement)
