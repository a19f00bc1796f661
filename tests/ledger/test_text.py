"""Text fields: whatever the characters, stored and returned verbatim, or refused whole."""

from __future__ import annotations

import pytest
from quart.typing import TestClientProtocol as Client
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from service.ledger.models import Account, Entry, User
from tests.ledger.conftest import Api, Ledger

TEXTS = [
    "Zoë Ünïcødé 名前 مرحبا",
    "e\u0301 and \u00e9: not normalized",
    "👩‍👩‍👧 🙂",
    "Robert'); DROP TABLE users;--",
    "' OR '1'='1",
    "100% _under_ \\back\\slash",
    "名" * 100,
    "🙂" * 100,
]


async def _stored(reader: AsyncEngine, column: object, key: object, value: int) -> object:
    async with reader.connect() as fresh:  # a connection of its own, after the commit
        return await fresh.scalar(select(column).where(key == value))  # type: ignore[call-overload]


@pytest.mark.service_committing
@pytest.mark.parametrize("text", TEXTS)
async def test_any_text_is_stored_and_returned_verbatim(
    api: Api, service_client: Client, ledger_reader: AsyncEngine, text: str
) -> None:
    response = await service_client.post(
        "/users", json={"name": text, "email": "verbatim@example.com"}
    )
    assert response.status_code == 201
    user = await response.get_json()
    headers = {"Authorization": f"Bearer {user['token']}"}
    response = await service_client.post(
        "/accounts", json={"name": text, "currency": "USD"}, headers=headers
    )
    account = await response.get_json()
    response = await service_client.post(
        f"/accounts/{account['id']}/deposits",
        json={"amount": 1, "description": f"{text}\nsecond line\ttab"},
        headers=headers,
    )
    entry = await response.get_json()

    assert (user["name"], account["name"]) == (text, text)
    assert entry["description"] == f"{text}\nsecond line\ttab"
    me = await (await service_client.get("/users/me", headers=headers)).get_json()
    fetched = await (
        await service_client.get(f"/accounts/{account['id']}", headers=headers)
    ).get_json()
    assert (me["name"], fetched["name"]) == (text, text)
    assert await _stored(ledger_reader, User.name, User.id, user["id"]) == text
    assert await _stored(ledger_reader, Account.name, Account.id, account["id"]) == text
    description = await _stored(ledger_reader, Entry.description, Entry.id, entry["id"])
    assert description == f"{text}\nsecond line\ttab"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/users", b'{"name": "a\\u0000b", "email": "nul@example.com"}'),
        ("/users", b'{"name": "lone \\ud800 surrogate", "email": "lone@example.com"}'),
        ("/accounts", b'{"name": "a\\u0000b", "currency": "USD"}'),
        ("/deposits", b'{"amount": 5, "description": "a\\u0000b"}'),
    ],
    ids=["nul-in-a-name", "lone-surrogate", "nul-in-an-account", "nul-in-a-description"],
)
async def test_text_the_database_cannot_store_is_a_422_and_writes_nothing(
    api: Api, service_client: Client, ledger: Ledger, path: str, body: bytes
) -> None:
    ada = await api.user()
    account = await api.account(ada)
    target = f"/accounts/{account}/deposits" if path == "/deposits" else path

    response = await service_client.post(
        target, data=body, headers={**ada.headers, "Content-Type": "application/json"}
    )

    assert response.status_code == 422
    assert (await response.get_json())["error"]["code"] == "validation_error"
    assert await ledger.entries() == 0
    assert await ledger.total() == 0
