"""Logs: one JSON line per request, one per committed movement of money; never a token."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from quart.typing import TestClientProtocol as Client

from service import logs
from service.db import unit_of_work
from service.ledger import money
from tests.ledger.conftest import Api

Lines = Callable[[], list[dict[str, Any]]]


def _capture(logger: logging.Logger, monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """What the logger's own JSON handler writes (to standard error when serving)."""
    handlers = [handler for handler in logger.handlers if getattr(handler, "_service_json", False)]
    assert len(handlers) == 1, "the app configures one JSON handler"
    handler = handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    buffer = io.StringIO()
    monkeypatch.setattr(handler, "stream", buffer)
    return buffer


@pytest.fixture
def access_lines(monkeypatch: pytest.MonkeyPatch) -> Iterator[Lines]:
    buffer = _capture(logs.ACCESS, monkeypatch)
    yield lambda: [json.loads(line) for line in buffer.getvalue().splitlines()]


@pytest.fixture
def money_lines(monkeypatch: pytest.MonkeyPatch) -> Iterator[Lines]:
    buffer = _capture(logs.MONEY, monkeypatch)
    yield lambda: [json.loads(line) for line in buffer.getvalue().splitlines()]


async def test_each_request_writes_one_json_access_line(
    api: Api, service_client: Client, access_lines: Lines
) -> None:
    ada = await api.user()
    account = await api.account(ada)
    before = len(access_lines())

    response = await service_client.get(
        f"/accounts/{account}", headers={**ada.headers, "X-Request-ID": "trace-42"}
    )

    assert response.status_code == 200
    [line] = access_lines()[before:]
    assert line["request_id"] == "trace-42"
    assert line["method"] == "GET"
    assert line["route"] == "/accounts/<int:account_id>"  # the template, not the id
    assert line["status"] == 200
    assert line["user_id"] == ada.id
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
    assert line["name"] == "service.access" and line["level"] == "INFO"


async def test_the_access_line_has_the_final_status_and_never_a_token(
    api: Api, service_client: Client, access_lines: Lines
) -> None:
    registered = await service_client.post("/users", json={"name": "A", "email": "a@b.io"})
    token = (await registered.get_json())["token"]
    await service_client.get("/users/me", headers={"Authorization": f"Bearer {token}"})
    await service_client.get("/users/me", headers={"Authorization": "Bearer lgr_guess"})
    await service_client.get("/nowhere")

    lines = access_lines()
    assert [(line["route"], line["status"]) for line in lines] == [
        ("/users", 201),
        ("/users/me", 200),
        ("/users/me", 401),
        (None, 404),
    ]
    assert [line["user_id"] for line in lines][2:] == [None, None]
    written = json.dumps(lines)
    assert token not in written and "lgr_guess" not in written and "Bearer" not in written


async def test_money_movements_are_logged_once_committed_with_ids_and_amounts(
    api: Api, service_client: Client, money_lines: Lines
) -> None:
    ada = await api.user()
    one, two = await api.account(ada), await api.account(ada)
    headers = {**ada.headers, "X-Request-ID": "move-1"}

    deposit = await service_client.post(
        f"/accounts/{one}/deposits", json={"amount": 900}, headers=headers
    )
    withdrawal = await service_client.post(
        f"/accounts/{one}/withdrawals", json={"amount": 100}, headers=headers
    )
    transfer = await service_client.post(
        "/transfers",
        json={"from_account_id": one, "to_account_id": two, "amount": 50},
        headers=headers,
    )
    refused = await service_client.post(
        f"/accounts/{one}/withdrawals", json={"amount": 10**9}, headers=headers
    )

    assert refused.status_code == 422  # rolled back: not logged
    lines = money_lines()
    assert [line["event"] for line in lines] == ["deposit", "withdrawal", "transfer"]
    assert {k: lines[0][k] for k in ("user_id", "account_id", "amount", "currency")} == {
        "user_id": ada.id,
        "account_id": one,
        "amount": 900,
        "currency": "USD",
    }
    assert {line["request_id"] for line in lines} == {"move-1"}
    assert lines[0]["entry_id"] == (await deposit.get_json())["id"]
    assert lines[1]["entry_id"] == (await withdrawal.get_json())["id"]
    assert lines[1]["amount"] == 100
    assert {k: lines[2][k] for k in ("transfer_id", "from_account_id", "to_account_id")} == {
        "transfer_id": (await transfer.get_json())["id"],
        "from_account_id": one,
        "to_account_id": two,
    }
    assert ada.token not in json.dumps(lines)


async def test_a_movement_rolled_back_after_it_was_made_is_not_logged(
    api: Api, money_lines: Lines
) -> None:
    ada = await api.user()
    account_id = await api.account(ada)

    with pytest.raises(RuntimeError):
        async with unit_of_work():
            await money.deposit(ada.id, account_id, 500, None)
            raise RuntimeError("the unit of work fails after the deposit")

    assert money_lines() == []
    async with unit_of_work():
        await money.deposit(ada.id, account_id, 500, None)
    assert [(line["event"], line["amount"]) for line in money_lines()] == [("deposit", 500)]
