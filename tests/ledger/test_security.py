"""JSON bodies only (415), and the headers on every response."""

from __future__ import annotations

from typing import Any

import pytest
from quart import Quart
from quart.typing import TestClientProtocol as Client
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from service.ledger.models import Account, Entry, User
from tests.ledger.conftest import Api
from tests.service_app import make_service_test_app

BODY = b'{"name": "Ada", "email": "ada@example.com"}'


async def _users(connection: AsyncConnection) -> int:
    return int(await connection.scalar(select(func.count()).select_from(User)) or 0)


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",  # what a cross-site form or fetch() may send without a preflight
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/jsonx",
        "text/json",
        None,
    ],
)
async def test_a_body_that_is_not_declared_json_is_a_415_and_writes_nothing(
    service_client: Client, service_connection: AsyncConnection, content_type: str | None
) -> None:
    headers = {"Content-Length": str(len(BODY))}
    if content_type is not None:
        headers["Content-Type"] = content_type

    response = await service_client.post("/users", data=BODY, headers=headers)

    assert response.status_code == 415
    assert (await response.get_json())["error"]["code"] == "unsupported_media_type"
    assert await _users(service_connection) == 0


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "APPLICATION/JSON",
        "application/merge-patch+json",
    ],
)
async def test_json_content_types_are_accepted(
    service_client: Client, service_connection: AsyncConnection, content_type: str
) -> None:
    response = await service_client.post(
        "/users", data=BODY, headers={"Content-Type": content_type}
    )

    assert response.status_code == 201
    assert await _users(service_connection) == 1


async def test_a_415_comes_before_authentication_and_any_write(
    api: Api, service_client: Client, service_connection: AsyncConnection
) -> None:
    ada = await api.user()
    account = await api.account(ada)

    response = await service_client.post(
        f"/accounts/{account}/deposits",
        data=b'{"amount": 100}',
        headers={**ada.headers, "Content-Type": "text/plain"},
    )

    assert response.status_code == 415
    assert await service_connection.scalar(select(func.count()).select_from(Entry)) == 0
    assert await service_connection.scalar(select(Account.balance)) == 0
    # Without a token it is a 415 all the same: the body's type is checked first.
    anonymous = await service_client.post(
        f"/accounts/{account}/deposits", data=b"{}", headers={"Content-Type": "text/plain"}
    )
    assert anonymous.status_code == 415


def _has_safe_headers(response: Any) -> None:
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Request-ID"]
    assert "Strict-Transport-Security" not in response.headers  # not configured


async def test_every_kind_of_answer_carries_the_headers(api: Api, service_client: Client) -> None:
    created = await service_client.post("/users", json={"name": "A", "email": "a@b.io"})
    token = {"Authorization": f"Bearer {(await created.get_json())['token']}"}
    answers = [
        created,  # the one carrying a new token
        await service_client.get("/users/me", headers=token),
        await service_client.get("/users/me"),  # 401
        await service_client.get("/accounts/999", headers=token),  # 404
        await service_client.post(
            "/users", data=b"{", headers={"Content-Type": "application/json"}
        ),
        await service_client.get("/no-such-route"),
        await service_client.delete("/users"),  # 405
        await service_client.get("/healthz"),
        await service_client.get("/openapi.json"),
    ]
    for response in answers:
        _has_safe_headers(response)


async def test_strict_transport_security_when_configured(service_app: Quart) -> None:
    app = make_service_test_app({**service_app.config, "HSTS_MAX_AGE": 31536000})
    async with app.test_app():
        response = await app.test_client().get("/healthz")

    assert response.headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"


@pytest.mark.parametrize(
    ("given", "echoed"),
    [
        ("req-123_abc.DEF:7", True),
        ("x" * 128, True),
        ("x" * 129, False),  # too long
        ("has space", False),
        ("caf\u00e9", False),  # not ASCII
        ("tab\there", False),
        ("", False),
    ],
)
async def test_the_request_id_is_echoed_when_sane_else_generated(
    service_client: Client, given: str, echoed: bool
) -> None:
    response = await service_client.get("/healthz", headers={"X-Request-ID": given})

    returned = response.headers["X-Request-ID"]
    if echoed:
        assert returned == given
    else:
        assert returned != given and len(returned) == 32 and returned.isalnum()


async def test_each_request_gets_its_own_generated_id(service_client: Client) -> None:
    ids = {(await service_client.get("/healthz")).headers["X-Request-ID"] for _ in range(5)}
    assert len(ids) == 5
