"""Accounts: creation, listing with cursors, and never revealing another user's."""

from __future__ import annotations

from typing import Any

import pytest
from quart.typing import TestClientProtocol as Client

from service.ledger.factories import AccountFactory, UserFactory
from service.testing import Queries
from tests.ledger.conftest import Api


async def test_an_account_starts_empty(api: Api, service_client: Client) -> None:
    ada = await api.user()
    response = await service_client.post(
        "/accounts", json={"name": "Savings", "currency": "EUR"}, headers=ada.headers
    )

    assert response.status_code == 201
    body = await response.get_json()
    assert {key: body[key] for key in ("name", "currency", "balance")} == {
        "name": "Savings",
        "currency": "EUR",
        "balance": 0,
    }
    fetched = await service_client.get(f"/accounts/{body['id']}", headers=ada.headers)
    assert await fetched.get_json() == body


@pytest.mark.parametrize(
    "body",
    [
        {"name": "x", "currency": "usd"},
        {"name": "x", "currency": "US"},
        {"name": "x", "currency": "DOLLARS"},
        {"name": "", "currency": "USD"},
        {"currency": "USD"},
    ],
)
async def test_a_bad_account_is_a_422(
    api: Api, service_client: Client, body: dict[str, Any]
) -> None:
    ada = await api.user()
    response = await service_client.post("/accounts", json=body, headers=ada.headers)
    assert response.status_code == 422
    assert (await response.get_json())["error"]["code"] == "validation_error"


async def test_another_users_account_is_not_found(api: Api, service_client: Client) -> None:
    ada, bob = await api.user(), await api.user()
    theirs = await api.account(bob)

    for path in (f"/accounts/{theirs}", f"/accounts/{theirs}/entries", "/accounts/999999"):
        response = await service_client.get(path, headers=ada.headers)
        assert response.status_code == 404, path
        assert (await response.get_json())["error"]["code"] == "not_found"
    assert (await service_client.get(f"/accounts/{10**30}", headers=ada.headers)).status_code == 404


async def test_the_list_shows_the_callers_accounts_page_by_page(
    api: Api, service_client: Client
) -> None:
    ada, bob = await api.user(), await api.user()
    mine = [await api.account(ada, name=f"a{number}") for number in range(5)]
    await api.account(bob)

    seen: list[int] = []
    cursor: str | None = None
    pages = 0
    while True:
        query = "?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = await (await service_client.get(f"/accounts{query}", headers=ada.headers)).get_json()
        seen += [item["id"] for item in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == mine
    assert pages == 3

    everything = await (await service_client.get("/accounts", headers=ada.headers)).get_json()
    assert [item["id"] for item in everything["items"]] == mine


@pytest.mark.parametrize(
    "query", ["?limit=0", "?limit=101", "?limit=x", "?cursor=bm9wZQ", "?limt=10", "?=0"]
)
async def test_bad_paging_is_a_422(api: Api, service_client: Client, query: str) -> None:
    ada = await api.user()
    response = await service_client.get(f"/accounts{query}", headers=ada.headers)
    assert response.status_code == 422
    assert (await response.get_json())["error"]["code"] == "validation_error"


async def test_a_page_of_accounts_costs_the_same_queries_however_long_it_is(
    service_client: Client, service_queries: Queries
) -> None:
    user, token = await UserFactory.create_with_token()
    await AccountFactory.create_batch_async(20, user_id=user.id)
    headers = {"Authorization": f"Bearer {token}"}
    await service_client.get("/users/me", headers=headers)  # first use: records last_used_at

    with service_queries.at_most(2):  # the caller, then the page: no query per account
        response = await service_client.get("/accounts?limit=20", headers=headers)

    assert response.status_code == 200
    assert len((await response.get_json())["items"]) == 20
