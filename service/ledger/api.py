"""The ledger's JSON API. Handlers use only ``service.db``: models and queries, no session."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import BaseModel
from quart import Blueprint, request
from quart_schema import (
    document_response,
    operation_id,
    security_scheme,
    tag,
    validate_querystring,
    validate_request,
    validate_response,
)
from sqlalchemy.exc import IntegrityError

from service import ratelimit
from service.errors import ApiError, documents_errors
from service.ledger import money
from service.ledger.auth import (
    authenticate,
    current_user,
    current_user_id,
    issue,
    require_room_for_a_token,
)
from service.ledger.idempotency import idempotent
from service.ledger.models import Account, Entry, Statement, Token, User
from service.ledger.pagination import decode_cursor, keyset_page
from service.ledger.schemas import (
    AccountOut,
    AccountPage,
    EntryOut,
    EntryPage,
    Movement,
    NewAccount,
    NewStatement,
    NewToken,
    NewTokenOut,
    NewTransfer,
    NewUser,
    NewUserOut,
    PageQuery,
    StatementOut,
    TokenList,
    TokenOut,
    TransferOut,
    UserOut,
)
from service.ledger.statements import request_statement, statement_out
from service.openapi import NoContent

api = Blueprint("ledger", __name__)

Reply = tuple[BaseModel | dict[str, Any], int, dict[str, str]]

# What each kind of operation can answer besides its success (documented in the OpenAPI
# document): every route may find the database unreachable (503); an authenticated one may
# refuse the token (401) or limit it (429); a body may be bad JSON (400), too big (413), not
# JSON at all (415) or invalid (422); a write may conflict at commit (409).
READ = (401, 429, 503)
READ_PAGE = (*READ, 422)
READ_ONE = (*READ, 404)
WRITE = (400, 401, 409, 413, 415, 422, 429, 503)
WRITE_IN = (*WRITE, 404)


@api.before_request
async def _authenticate() -> None:
    if request.endpoint == "ledger.create_user":
        # Counted before the body is even parsed: an invalid registration counts too, so
        # the limit bounds the work of validating them.
        await ratelimit.hit("registration", request.remote_addr or "unknown")
    else:
        await authenticate()


def _token_out(token: Token) -> TokenOut:
    return TokenOut.model_validate(token, from_attributes=True)


def _email_taken() -> ApiError:
    return ApiError(409, "email_taken", "That email address is already in use.")


@api.post("/users")
@tag(["Users"])
@security_scheme([])  # registering needs no token
@validate_request(NewUser)
@validate_response(NewUserOut, 201)
@documents_errors(400, 409, 413, 415, 422, 429, 503)
async def create_user(data: NewUser) -> tuple[NewUserOut, int]:
    """Create a user and a first API token, shown this once."""
    email_key = data.email.lower()
    if await User.query.filter_by(email_key=email_key).first() is not None:
        raise _email_taken()
    try:
        user = await User.create(name=data.name, email=data.email, email_key=email_key)
    except IntegrityError:  # the same email, registered concurrently
        raise _email_taken() from None
    _, secret = await issue(user.id, "default")
    out = UserOut.model_validate(user, from_attributes=True)
    return NewUserOut(**out.model_dump(), token=secret), 201


@api.get("/users/me")
@tag(["Users"])
@operation_id("get_current_user")
@validate_response(UserOut)
@documents_errors(*READ)
async def me() -> UserOut:
    """The user the token belongs to."""
    return UserOut.model_validate(await current_user(), from_attributes=True)


@api.post("/tokens")
@tag(["Tokens"])
@validate_request(NewToken)
@validate_response(NewTokenOut, 201)
@documents_errors(*WRITE)
async def create_token(data: NewToken) -> tuple[NewTokenOut, int]:
    """Issue another API token of the caller; its secret is shown this once."""
    await require_room_for_a_token(current_user_id())
    days = data.expires_in_days
    token, secret = await issue(
        current_user_id(), data.name, expires_in=None if days is None else timedelta(days=days)
    )
    return NewTokenOut(**_token_out(token).model_dump(), token=secret), 201


@api.get("/tokens")
@tag(["Tokens"])
@validate_querystring(PageQuery)
@validate_response(TokenList)
@documents_errors(*READ_PAGE)
async def list_tokens(query_args: PageQuery) -> TokenList:
    """The caller's tokens, oldest first, without their secrets."""
    query = Token.query.filter_by(user_id=current_user_id()).order_by(Token.id)
    if query_args.cursor is not None:
        query = query.where(Token.id > decode_cursor(query_args.cursor))
    page, next_cursor = await keyset_page(query, query_args.limit)
    return TokenList(items=[_token_out(token) for token in page], next_cursor=next_cursor)


@api.delete("/tokens/<int:token_id>")
@tag(["Tokens"])
@document_response(NoContent, 204)
@documents_errors(*READ_ONE)
async def revoke_token(token_id: int) -> tuple[str, int]:
    """Revoke a token of the caller (this one too): from now on it gets 401, everywhere."""
    token = None
    if 0 < token_id < 2**31:
        token = await Token.query.filter_by(id=token_id, user_id=current_user_id()).first()
    if token is None:  # also another user's: never revealed
        raise ApiError(404, "not_found", "No such token.")
    await token.delete()
    return "", 204


@api.post("/accounts")
@tag(["Accounts"])
@validate_request(NewAccount)
@validate_response(AccountOut, 201)
@documents_errors(*WRITE)
async def create_account(data: NewAccount) -> tuple[AccountOut, int]:
    """Open an account of the caller, in an ISO 4217 currency, with a balance of 0."""
    account = await Account.create(
        user_id=current_user_id(), name=data.name, currency=data.currency
    )
    return AccountOut.model_validate(account, from_attributes=True), 201


@api.get("/accounts")
@tag(["Accounts"])
@validate_querystring(PageQuery)
@validate_response(AccountPage)
@documents_errors(*READ_PAGE)
async def list_accounts(query_args: PageQuery) -> AccountPage:
    """The caller's accounts, oldest first."""
    query = Account.query.filter_by(user_id=current_user_id()).order_by(Account.id)
    if query_args.cursor is not None:
        query = query.where(Account.id > decode_cursor(query_args.cursor))
    page, next_cursor = await keyset_page(query, query_args.limit)
    return AccountPage(
        items=[AccountOut.model_validate(row, from_attributes=True) for row in page],
        next_cursor=next_cursor,
    )


@api.get("/accounts/<int:account_id>")
@tag(["Accounts"])
@validate_response(AccountOut)
@documents_errors(*READ_ONE)
async def get_account(account_id: int) -> AccountOut:
    """One account of the caller, with its balance; another user's is a 404."""
    account = await money.owned_account(current_user_id(), account_id)
    return AccountOut.model_validate(account, from_attributes=True)


@api.post("/accounts/<int:account_id>/deposits")
@tag(["Movements"])
@validate_request(Movement)
@validate_response(EntryOut, 201)
@documents_errors(*WRITE_IN)
async def create_deposit(account_id: int, data: Movement) -> Reply:
    """Put money into an account.

    Repeating the request with the same `Idempotency-Key` replays the first answer.
    """
    return await _move(money.deposit, account_id, data)


@api.post("/accounts/<int:account_id>/withdrawals")
@tag(["Movements"])
@validate_request(Movement)
@validate_response(EntryOut, 201)
@documents_errors(*WRITE_IN)
async def create_withdrawal(account_id: int, data: Movement) -> Reply:
    """Take money out of an account.

    Never below a balance of 0: a 422 `insufficient_funds`. Repeating the request with the
    same `Idempotency-Key` replays the first answer.
    """
    return await _move(money.withdraw, account_id, data)


async def _move(operation: money.Operation, account_id: int, data: Movement) -> Reply:
    user_id = current_user_id()

    async def work() -> tuple[BaseModel, int]:
        entry = await operation(user_id, account_id, data.amount, data.description)
        return EntryOut.model_validate(entry, from_attributes=True), 201

    return await idempotent(user_id, work)


@api.get("/accounts/<int:account_id>/entries")
@tag(["Movements"])
@validate_querystring(PageQuery)
@validate_response(EntryPage)
@documents_errors(*READ_PAGE, 404)
async def list_entries(account_id: int, query_args: PageQuery) -> EntryPage:
    """The account's entries, newest first; the cursor continues below the last one shown."""
    await money.owned_account(current_user_id(), account_id)
    query = Entry.query.filter_by(account_id=account_id).order_by(Entry.id.desc())
    if query_args.cursor is not None:
        query = query.where(Entry.id < decode_cursor(query_args.cursor))
    page, next_cursor = await keyset_page(query, query_args.limit)
    return EntryPage(
        items=[EntryOut.model_validate(row, from_attributes=True) for row in page],
        next_cursor=next_cursor,
    )


@api.post("/transfers")
@tag(["Movements"])
@validate_request(NewTransfer)
@validate_response(TransferOut, 201)
@documents_errors(*WRITE_IN)
async def create_transfer(data: NewTransfer) -> Reply:
    """Move money between two accounts of the caller, in one transaction.

    Both accounts must be in the same currency. Repeating the request with the same
    `Idempotency-Key` replays the first answer.
    """
    user_id = current_user_id()

    async def work() -> tuple[BaseModel, int]:
        record = await money.transfer(
            user_id, data.from_account_id, data.to_account_id, data.amount, data.description
        )
        return TransferOut.model_validate(record, from_attributes=True), 201

    return await idempotent(user_id, work)


@api.post("/accounts/<int:account_id>/statements")
@tag(["Statements"])
@validate_request(NewStatement)
@validate_response(StatementOut, 202)
@documents_errors(*WRITE_IN)
async def create_statement(account_id: int, data: NewStatement) -> tuple[StatementOut, int]:
    """Ask for a statement of the period; a job computes it once this request has committed."""
    user_id = current_user_id()
    account = await money.owned_account(user_id, account_id)
    statement = await request_statement(user_id, account.id, data.from_, data.to)
    return statement_out(statement), 202


@api.get("/statements/<int:statement_id>")
@tag(["Statements"])
@validate_response(StatementOut)
@documents_errors(*READ_ONE)
async def get_statement(statement_id: int) -> StatementOut:
    """A statement of an account, with its figures once computed.

    Its `status` is `pending`, `ready` with its figures, or `failed` with a reason.
    """
    statement = None
    if 0 < statement_id < 2**31:
        statement = await Statement.query.filter_by(
            id=statement_id, user_id=current_user_id()
        ).first()
    if statement is None:
        raise ApiError(404, "not_found", "No such statement.")
    return statement_out(statement)
