"""The peer: the ledger's read and deposit on FastAPI + advanced-alchemy, as its docs build them.

``hypercorn bench.peer_app:app`` with ``DATABASE_URL`` naming a database with the
base commit's schema (``users``, ``accounts``, ``entries``, made by its
migrations; ``bench/compare.py`` points it at the base's seeded database, so
that the base's tokens work here too). Two routes with the service's contract:

- ``GET /accounts/{id}``: the caller's account, else 404;
- ``POST /accounts/{id}/deposits`` ``{amount, description?}``: 201 with the entry;

both authenticated by ``Authorization: Bearer <token>`` against the SHA-256 hash
stored in ``users.token_hash``.

Built after advanced-alchemy's FastAPI guide ("FastAPI Integration"): a
``SQLAlchemyAsyncConfig`` with ``commit_mode="autocommit"`` and
``expire_on_commit=False`` given to ``AdvancedAlchemy(config=..., app=app)``; the
request's session injected with ``Depends(alchemy.provide_session())``; one
``SQLAlchemyAsyncRepositoryService`` per model, with its repository, provided by
``async with Service.new(session=db_session)``; pydantic response models
through ``service.to_schema()``; FastAPI's ``HTTPBearer`` for the token.

Where a choice was left, it is the one that sends the service's own SQL, so that
the ratio compares the stacks rather than the statements (``bench/compare.py``
prints the round trips of the service, for comparison): the engine pre-pings
like the service's (``pool_pre_ping=True``; advanced-alchemy's default is off),
the account is locked with ``get_one_or_none(..., with_for_update=True)`` and
changed in place, and the entry is created with ``auto_refresh=False`` (its
default would read the new row back: one SELECT more), so the flush sends the
UPDATE and the INSERT. A deposit is then: the user, the account FOR UPDATE, the
UPDATE, the INSERT, the COMMIT, as in the base.

One difference stays, being advanced-alchemy's design: its middleware commits
after the response has been sent, so the client has its 201 before the COMMIT
(and a failed COMMIT is only logged). The service commits before it answers.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncGenerator
from datetime import UTC, datetime
from typing import Annotated

from advanced_alchemy.extensions.fastapi import (
    AdvancedAlchemy,
    AsyncSessionConfig,
    EngineConfig,
    SQLAlchemyAsyncConfig,
    repository,
    service,
)
from fastapi import APIRouter, Depends, FastAPI, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import BigInteger, DateTime, ForeignKey, Integer, String
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["app"]


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)  # stored naive UTC, as the service does


class Base(DeclarativeBase):
    """The tables are the base commit's, made by its migrations: never created here."""


class UserModel(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    email: Mapped[str] = mapped_column(String(320))
    email_key: Mapped[str] = mapped_column(String(320), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=_utcnow)


class AccountModel(Base):
    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    name: Mapped[str] = mapped_column(String(100))
    currency: Mapped[str] = mapped_column(String(3))
    balance: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=_utcnow)


class EntryModel(Base):
    __tablename__ = "entries"

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    amount: Mapped[int] = mapped_column(BigInteger)
    balance_after: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(16))
    description: Mapped[str | None] = mapped_column(String(500))
    transfer_id: Mapped[int | None] = mapped_column(Integer)  # transfers: not mapped here
    created_at: Mapped[datetime] = mapped_column(DateTime, default=_utcnow)


class Schema(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class Account(Schema):
    id: int
    name: str
    currency: str
    balance: int
    created_at: datetime


class Entry(Schema):
    id: int
    account_id: int
    amount: int
    balance_after: int
    kind: str
    description: str | None
    created_at: datetime


class Movement(BaseModel):
    amount: int = Field(gt=0, le=10**12)
    description: str | None = Field(default=None, max_length=500)


class UserService(service.SQLAlchemyAsyncRepositoryService[UserModel]):
    class Repo(repository.SQLAlchemyAsyncRepository[UserModel]):
        model_type = UserModel

    repository_type = Repo


class AccountService(service.SQLAlchemyAsyncRepositoryService[AccountModel]):
    class Repo(repository.SQLAlchemyAsyncRepository[AccountModel]):
        model_type = AccountModel

    repository_type = Repo


class EntryService(service.SQLAlchemyAsyncRepositoryService[EntryModel]):
    class Repo(repository.SQLAlchemyAsyncRepository[EntryModel]):
        model_type = EntryModel

    repository_type = Repo


alchemy_config = SQLAlchemyAsyncConfig(
    connection_string=os.environ["DATABASE_URL"],
    session_config=AsyncSessionConfig(expire_on_commit=False),
    engine_config=EngineConfig(pool_pre_ping=True),
    commit_mode="autocommit",
)
app = FastAPI()
alchemy = AdvancedAlchemy(config=alchemy_config, app=app)

DatabaseSession = Annotated[AsyncSession, Depends(alchemy.provide_session())]


async def provide_users(db_session: DatabaseSession) -> AsyncGenerator[UserService, None]:
    async with UserService.new(session=db_session) as users:
        yield users


async def provide_accounts(db_session: DatabaseSession) -> AsyncGenerator[AccountService, None]:
    async with AccountService.new(session=db_session) as accounts:
        yield accounts


async def provide_entries(db_session: DatabaseSession) -> AsyncGenerator[EntryService, None]:
    async with EntryService.new(session=db_session) as entries:
        yield entries


Users = Annotated[UserService, Depends(provide_users)]
Accounts = Annotated[AccountService, Depends(provide_accounts)]
Entries = Annotated[EntryService, Depends(provide_entries)]
Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(HTTPBearer(auto_error=False))]


async def current_user(users: Users, credentials: Bearer) -> UserModel:
    user = None
    if credentials is not None:
        token_hash = hashlib.sha256(credentials.credentials.encode()).hexdigest()
        user = await users.get_one_or_none(token_hash=token_hash)
    if user is None:
        raise HTTPException(401, "A valid `Authorization: Bearer <token>` is required.")
    return user


CurrentUser = Annotated[UserModel, Depends(current_user)]
router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/accounts/{account_id}", response_model=Account)
async def get_account(account_id: int, user: CurrentUser, accounts: Accounts) -> Account:
    account = await accounts.get_one_or_none(id=account_id, user_id=user.id)
    if account is None:
        raise HTTPException(404, "No such account.")
    return accounts.to_schema(account, schema_type=Account)


@router.post("/accounts/{account_id}/deposits", response_model=Entry, status_code=201)
async def create_deposit(
    account_id: int, data: Movement, user: CurrentUser, accounts: Accounts, entries: Entries
) -> Entry:
    account = await accounts.get_one_or_none(id=account_id, user_id=user.id, with_for_update=True)
    if account is None:
        raise HTTPException(404, "No such account.")
    account.balance += data.amount
    entry = await entries.create(
        EntryModel(
            account_id=account.id,
            amount=data.amount,
            balance_after=account.balance,
            kind="deposit",
            description=data.description,
        ),
        auto_refresh=False,
    )
    return entries.to_schema(entry, schema_type=Entry)


app.include_router(router)
