"""Deposits, withdrawals and transfers: each write one transaction, a failure leaves no trace."""

from __future__ import annotations

from typing import Any

import pytest
from quart.typing import TestClientProtocol as Client

from service.testing import Queries
from tests.ledger.conftest import Api, Ledger


async def _post(client: Client, path: str, body: Any, headers: dict[str, str]) -> Any:
    response = await client.post(path, json=body, headers=headers)
    return response.status_code, await response.get_json()


async def test_deposits_and_withdrawals_move_the_balance(
    api: Api, service_client: Client, ledger: Ledger
) -> None:
    ada = await api.user()
    account = await api.account(ada)

    status, entry = await _post(
        service_client,
        f"/accounts/{account}/deposits",
        {"amount": 1000, "description": "pay"},
        ada.headers,
    )
    assert status == 201
    assert {key: entry[key] for key in ("account_id", "amount", "balance_after", "kind")} == {
        "account_id": account,
        "amount": 1000,
        "balance_after": 1000,
        "kind": "deposit",
    }
    assert entry["description"] == "pay"
    status, entry = await _post(
        service_client, f"/accounts/{account}/withdrawals", {"amount": 300}, ada.headers
    )
    assert (status, entry["amount"], entry["balance_after"], entry["kind"]) == (
        201,
        -300,
        700,
        "withdrawal",
    )
    assert await ledger.balance(account) == 700 == await ledger.entry_sum(account)


async def test_an_overdraft_is_refused_and_writes_nothing(
    api: Api, service_client: Client, ledger: Ledger
) -> None:
    ada = await api.user()
    account = await api.account(ada)
    await api.deposit(ada, account, 100)

    status, body = await _post(
        service_client, f"/accounts/{account}/withdrawals", {"amount": 101}, ada.headers
    )

    assert (status, body["error"]["code"]) == (422, "insufficient_funds")
    assert await ledger.balance(account) == 100
    assert await ledger.entries() == 1


@pytest.mark.parametrize("amount", [0, -5, 10**12 + 1, 1.5, "10", None, True, 10**30, "1e3"])
async def test_an_amount_out_of_range_or_not_an_integer_is_a_422(
    api: Api, service_client: Client, ledger: Ledger, amount: Any
) -> None:
    ada = await api.user()
    account = await api.account(ada)

    for kind in ("deposits", "withdrawals"):
        status, body = await _post(
            service_client, f"/accounts/{account}/{kind}", {"amount": amount}, ada.headers
        )
        assert (status, body["error"]["code"]) == (422, "validation_error")
        assert body["error"]["details"][0]["field"] == "amount"
    assert await ledger.entries() == 0


async def test_the_largest_amount_is_accepted(api: Api, service_client: Client) -> None:
    ada = await api.user()
    account = await api.account(ada)
    assert (await api.deposit(ada, account, 10**12)).status_code == 201


async def test_money_cannot_be_moved_in_another_users_account(
    api: Api, service_client: Client, ledger: Ledger
) -> None:
    ada, bob = await api.user(), await api.user()
    theirs = await api.account(bob)
    mine = await api.account(ada)
    await api.deposit(bob, theirs, 500)

    for path in (f"/accounts/{theirs}/deposits", f"/accounts/{theirs}/withdrawals"):
        status, body = await _post(service_client, path, {"amount": 1}, ada.headers)
        assert (status, body["error"]["code"]) == (404, "not_found")
    status, body = await _post(
        service_client,
        "/transfers",
        {"from_account_id": theirs, "to_account_id": mine, "amount": 1},
        ada.headers,
    )
    assert (status, body["error"]["code"]) == (404, "not_found")
    assert await ledger.balance(theirs) == 500
    assert await ledger.entries() == 1


async def test_a_transfer_writes_both_entries_and_both_balances(
    api: Api, service_client: Client, ledger: Ledger
) -> None:
    ada = await api.user()
    source, target = await api.account(ada), await api.account(ada)
    await api.deposit(ada, source, 1000)

    status, body = await _post(
        service_client,
        "/transfers",
        {"from_account_id": source, "to_account_id": target, "amount": 400, "description": "rent"},
        ada.headers,
    )

    assert status == 201
    assert {key: body[key] for key in ("from_account_id", "to_account_id", "amount")} == {
        "from_account_id": source,
        "to_account_id": target,
        "amount": 400,
    }
    assert (await ledger.balance(source), await ledger.balance(target)) == (600, 400)
    assert (await ledger.entry_sum(source), await ledger.entry_sum(target)) == (600, 400)
    entries = await (
        await service_client.get(f"/accounts/{target}/entries", headers=ada.headers)
    ).get_json()
    assert [(e["kind"], e["amount"], e["description"]) for e in entries["items"]] == [
        ("transfer_in", 400, "rent")
    ]


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("same", "same_account"),
        ("currency", "currency_mismatch"),
        ("funds", "insufficient_funds"),
    ],
)
async def test_a_refused_transfer_leaves_no_trace(
    api: Api, service_client: Client, ledger: Ledger, case: str, code: str
) -> None:
    ada = await api.user()
    source = await api.account(ada, "USD")
    target = {
        "same": source,
        "currency": await api.account(ada, "EUR"),
        "funds": await api.account(ada, "USD"),
    }[case]
    await api.deposit(ada, source, 100)
    amount = 1000 if case == "funds" else 50

    status, body = await _post(
        service_client,
        "/transfers",
        {"from_account_id": source, "to_account_id": target, "amount": amount},
        ada.headers,
    )

    assert (status, body["error"]["code"]) == (422, code)
    assert await ledger.transfers() == 0
    assert await ledger.entries() == 1
    assert await ledger.balance(source) == 100


async def test_entries_page_newest_first_without_skips_or_repeats_while_growing(
    api: Api, service_client: Client
) -> None:
    ada = await api.user()
    account = await api.account(ada)
    for amount in range(1, 8):
        await api.deposit(ada, account, amount)

    seen: list[int] = []
    cursor: str | None = None
    added = 100
    while True:
        query = "?limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = await (
            await service_client.get(f"/accounts/{account}/entries{query}", headers=ada.headers)
        ).get_json()
        seen += [item["amount"] for item in page["items"]]
        # New entries arrive between pages: they are newer than the cursor.
        await api.deposit(ada, account, added)
        added += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert seen == [7, 6, 5, 4, 3, 2, 1]
    first = await (
        await service_client.get(f"/accounts/{account}/entries", headers=ada.headers)
    ).get_json()
    assert [item["amount"] for item in first["items"][:3]] == [102, 101, 100]


async def test_a_page_of_entries_costs_the_same_queries_however_long_it_is(
    api: Api, service_client: Client, service_queries: Queries
) -> None:
    ada = await api.user()
    account = await api.account(ada)
    for amount in range(1, 11):
        assert (await api.deposit(ada, account, amount)).status_code == 201

    with service_queries.at_most(3):  # the caller, the account, then the page
        response = await service_client.get(f"/accounts/{account}/entries", headers=ada.headers)

    assert response.status_code == 200
    assert len((await response.get_json())["items"]) == 10
