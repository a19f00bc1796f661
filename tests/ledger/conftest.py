from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from quart.typing import TestClientProtocol as Client
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.ledger.models import Account, Entry, Transfer
from tests.databases import plain_engine

_numbers = itertools.count()


@dataclass
class Caller:
    """A registered user, as the API sees them."""

    id: int
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class Api:
    client: Client

    async def user(self, name: str = "Ada") -> Caller:
        email = f"user{next(_numbers)}@example.com"
        response = await self.client.post("/users", json={"name": name, "email": email})
        assert response.status_code == 201, await response.get_data()
        body = await response.get_json()
        return Caller(id=body["id"], token=body["token"])

    async def account(self, caller: Caller, currency: str = "USD", name: str = "Main") -> int:
        response = await self.client.post(
            "/accounts", json={"name": name, "currency": currency}, headers=caller.headers
        )
        assert response.status_code == 201, await response.get_data()
        account_id: int = (await response.get_json())["id"]
        return account_id

    async def deposit(self, caller: Caller, account_id: int, amount: int) -> Any:
        return await self.client.post(
            f"/accounts/{account_id}/deposits", json={"amount": amount}, headers=caller.headers
        )


@pytest.fixture
def api(service_client: Client) -> Api:
    return Api(service_client)


@dataclass
class Ledger:
    """What is stored, read through a connection that is not the requests' session."""

    read: Callable[[Any], Awaitable[Any]]

    async def balance(self, account_id: int) -> int:
        balance: int = await self.read(select(Account.balance).where(Account.id == account_id))
        return balance

    async def entry_sum(self, account_id: int) -> int:
        total = await self.read(
            select(func.coalesce(func.sum(Entry.amount), 0)).where(Entry.account_id == account_id)
        )
        return int(total)

    async def entries(self) -> int:
        count: int = await self.read(select(func.count()).select_from(Entry))
        return count

    async def transfers(self) -> int:
        count: int = await self.read(select(func.count()).select_from(Transfer))
        return count

    async def total(self) -> int:
        return int(await self.read(select(func.coalesce(func.sum(Account.balance), 0))))


@pytest.fixture(scope="session")
async def ledger_reader(service_database_url: str, service_engine: AsyncEngine) -> Any:
    reader = plain_engine(service_database_url)
    yield reader
    await reader.dispose()


@pytest.fixture
def ledger(service_connection: AsyncConnection | None, ledger_reader: AsyncEngine) -> Ledger:
    async def read(query: Any) -> Any:
        if service_connection is not None:
            return await service_connection.scalar(query)
        async with ledger_reader.connect() as fresh:
            return await fresh.scalar(query)

    return Ledger(read)
