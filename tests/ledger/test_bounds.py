"""Out-of-range input that used to be a 500: cursors beyond the id column, balances near the
64-bit limit; ISO 4217 currencies; idempotency keys that expire and the job that prunes them."""

from __future__ import annotations

import base64
from datetime import timedelta

import pytest
from quart.typing import TestClientProtocol as Client
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from service.db import unit_of_work
from service.ledger.maintenance import prune_idempotency_keys
from service.ledger.models import Account, Entry, IdempotencyKey, utcnow
from service.ledger.schemas import MAX_BALANCE
from tests.ledger.conftest import Api, Ledger


def _cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "last_id",
    [2**31, 2**63, 2**64, 10**30],
    ids=["postgresql-integer+1", "sqlite-integer+1", "2^64", "10^30"],
)
async def test_a_cursor_beyond_the_id_column_is_a_422(
    api: Api, service_client: Client, last_id: int
) -> None:
    ada = await api.user()
    account = await api.account(ada)
    cursor = _cursor(f"id:{last_id}")

    for path in ("/accounts", f"/accounts/{account}/entries"):
        response = await service_client.get(f"{path}?cursor={cursor}", headers=ada.headers)
        assert response.status_code == 422, path
        error = (await response.get_json())["error"]
        assert error["code"] == "validation_error"
        assert [detail["field"] for detail in error["details"]] == ["cursor"]


async def test_the_largest_id_is_still_a_cursor(api: Api, service_client: Client) -> None:
    ada = await api.user()
    account = await api.account(ada)
    response = await service_client.get(
        f"/accounts?cursor={_cursor(f'id:{2**31 - 1}')}", headers=ada.headers
    )
    assert response.status_code == 200
    assert (await response.get_json())["items"] == []
    below = await service_client.get(
        f"/accounts/{account}/entries?cursor={_cursor(f'id:{2**31 - 1}')}", headers=ada.headers
    )
    assert below.status_code == 200


async def _set_balance(connection: AsyncConnection, account_id: int, balance: int) -> None:
    await connection.execute(
        update(Account).where(Account.id == account_id).values(balance=balance)
    )


@pytest.mark.parametrize("start", [MAX_BALANCE - 5, 2**63 - 10], ids=["max-balance", "bigint"])
async def test_a_deposit_that_would_overflow_the_balance_is_a_422_and_writes_nothing(
    api: Api, service_client: Client, service_connection: AsyncConnection, start: int
) -> None:
    ada = await api.user()
    account = await api.account(ada)
    await _set_balance(service_connection, account, start)

    response = await service_client.post(
        f"/accounts/{account}/deposits", json={"amount": 100}, headers=ada.headers
    )

    assert response.status_code == 422
    assert (await response.get_json())["error"]["code"] == "balance_limit_exceeded"
    assert await service_connection.scalar(select(Account.balance)) == start
    assert await service_connection.scalar(select(func.count()).select_from(Entry)) == 0


async def test_a_deposit_up_to_the_maximum_balance_is_accepted(
    api: Api, service_client: Client, service_connection: AsyncConnection
) -> None:
    ada = await api.user()
    account = await api.account(ada)
    await _set_balance(service_connection, account, MAX_BALANCE - 100)

    response = await service_client.post(
        f"/accounts/{account}/deposits", json={"amount": 100}, headers=ada.headers
    )

    assert response.status_code == 201
    assert (await response.get_json())["balance_after"] == MAX_BALANCE


async def test_a_transfer_that_would_overflow_the_target_is_a_422_and_moves_nothing(
    api: Api, service_client: Client, service_connection: AsyncConnection, ledger: Ledger
) -> None:
    ada = await api.user()
    source, target = await api.account(ada), await api.account(ada)
    assert (await api.deposit(ada, source, 1000)).status_code == 201
    await _set_balance(service_connection, target, 2**63 - 500)

    response = await service_client.post(
        "/transfers",
        json={"from_account_id": source, "to_account_id": target, "amount": 1000},
        headers=ada.headers,
    )

    assert response.status_code == 422
    assert (await response.get_json())["error"]["code"] == "balance_limit_exceeded"
    assert await ledger.balance(source) == 1000
    assert await ledger.balance(target) == 2**63 - 500
    assert await ledger.transfers() == 0


@pytest.mark.parametrize("currency", ["ZZZ", "ABC", "XYZ", "QQQ"])
async def test_a_currency_outside_iso_4217_is_a_422(
    api: Api, service_client: Client, service_connection: AsyncConnection, currency: str
) -> None:
    ada = await api.user()

    response = await service_client.post(
        "/accounts", json={"name": "x", "currency": currency}, headers=ada.headers
    )

    assert response.status_code == 422
    assert [d["field"] for d in (await response.get_json())["error"]["details"]] == ["currency"]
    assert await service_connection.scalar(select(func.count()).select_from(Account)) == 0


@pytest.mark.parametrize("currency", ["USD", "EUR", "JPY", "CHF", "XAU"])
async def test_iso_4217_currencies_are_accepted(
    api: Api, service_client: Client, currency: str
) -> None:
    ada = await api.user()
    response = await service_client.post(
        "/accounts", json={"name": "x", "currency": currency}, headers=ada.headers
    )
    assert response.status_code == 201


async def test_the_openapi_document_lists_the_iso_4217_codes(service_client: Client) -> None:
    spec = await (await service_client.get("/openapi.json")).get_json()
    body = spec["paths"]["/accounts"]["post"]["requestBody"]["content"]["application/json"]
    schema = spec["components"]["schemas"][body["schema"]["$ref"].rsplit("/", 1)[1]]
    codes = schema["properties"]["currency"]["enum"]
    assert {"USD", "EUR", "JPY"} <= set(codes) and "ZZZ" not in codes and len(codes) > 150


async def _age_keys(connection: AsyncConnection, age: timedelta) -> None:
    await connection.execute(update(IdempotencyKey).values(created_at=utcnow() - age))


async def test_an_idempotency_key_older_than_24_hours_is_treated_as_absent(
    api: Api, service_client: Client, service_connection: AsyncConnection, ledger: Ledger
) -> None:
    ada = await api.user()
    account = await api.account(ada)
    headers = {**ada.headers, "Idempotency-Key": "salary-1"}
    first = await service_client.post(
        f"/accounts/{account}/deposits", json={"amount": 100}, headers=headers
    )
    await _age_keys(service_connection, timedelta(hours=23, minutes=59))
    replayed = await service_client.post(
        f"/accounts/{account}/deposits", json={"amount": 100}, headers=headers
    )
    assert replayed.headers.get("Idempotent-Replayed") == "true"
    assert await ledger.balance(account) == 100

    await _age_keys(service_connection, timedelta(hours=24, seconds=1))
    # Expired: applied again, and even another body is no longer "reused".
    again = await service_client.post(
        f"/accounts/{account}/deposits", json={"amount": 7}, headers=headers
    )

    assert first.status_code == replayed.status_code == again.status_code == 201
    assert "Idempotent-Replayed" not in again.headers
    assert await ledger.balance(account) == 107
    stored = await service_connection.scalar(select(IdempotencyKey.created_at))
    assert stored is not None and utcnow() - stored < timedelta(minutes=1)  # the new claim


async def test_the_prune_job_deletes_the_keys_older_than_24_hours(
    api: Api, service_client: Client, service_connection: AsyncConnection
) -> None:
    ada = await api.user()
    account = await api.account(ada)
    for key in ("old-1", "old-2", "fresh"):
        response = await service_client.post(
            f"/accounts/{account}/deposits",
            json={"amount": 1},
            headers={**ada.headers, "Idempotency-Key": key},
        )
        assert response.status_code == 201
    await service_connection.execute(
        update(IdempotencyKey)
        .where(IdempotencyKey.key.like("old-%"))
        .values(created_at=utcnow() - timedelta(hours=25))
    )

    async with unit_of_work():
        await prune_idempotency_keys()

    left = (await service_connection.execute(select(IdempotencyKey.key))).scalars().all()
    assert left == ["fresh"]


@pytest.mark.parametrize(
    ("amount", "status"),
    [(100.0, 201), (100, 201), (100.5, 422), ("100", 422), (True, 422), (1e13, 422)],
)
async def test_an_amount_is_a_json_integer_which_100_0_is_too(
    api: Api, service_client: Client, ledger: Ledger, amount: object, status: int
) -> None:
    ada = await api.user()
    account = await api.account(ada)

    response = await service_client.post(
        f"/accounts/{account}/deposits", json={"amount": amount}, headers=ada.headers
    )

    assert response.status_code == status
    assert await ledger.balance(account) == (100 if status == 201 else 0)


async def test_a_name_is_stored_verbatim_and_never_blank_or_padded(
    api: Api, service_client: Client, service_connection: AsyncConnection
) -> None:
    ada = await api.user()
    for name in ("  Savings", "Savings  ", " ", "\t", ""):
        refused = await service_client.post(
            "/accounts", json={"name": name, "currency": "EUR"}, headers=ada.headers
        )
        assert refused.status_code == 422, repr(name)
        assert (await refused.get_json())["error"]["details"][0]["field"] == "name"
    kept = await service_client.post(
        "/accounts", json={"name": "Rainy  day", "currency": "EUR"}, headers=ada.headers
    )
    assert (await kept.get_json())["name"] == "Rainy  day"
    stored = (await service_connection.execute(select(Account.name))).scalars().all()
    assert stored == ["Rainy  day"]
