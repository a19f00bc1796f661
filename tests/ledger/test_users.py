"""Users, tokens, authentication, and the JSON error contract."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import pytest
from quart.typing import TestClientProtocol as Client
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from service.ledger.models import Token
from tests.ledger.conftest import Api


def _error(body: Any) -> dict[str, Any]:
    error: dict[str, Any] = body["error"]
    return error


async def test_a_new_user_gets_a_token_stored_only_as_a_hash(
    service_client: Client, service_connection: AsyncConnection
) -> None:
    response = await service_client.post("/users", json={"name": "Ada", "email": "Ada@Example.com"})

    assert response.status_code == 201
    body = await response.get_json()
    assert set(body) == {"id", "name", "email", "created_at", "token"}
    assert body["name"] == "Ada"
    assert body["email"] == "Ada@example.com"
    stored = (
        await service_connection.execute(
            select(Token.token_hash, Token.prefix).where(Token.user_id == body["id"])
        )
    ).one()
    assert stored.token_hash == hashlib.sha256(body["token"].encode()).hexdigest()
    assert body["token"] not in stored.token_hash
    assert body["token"].startswith("lgr_") and body["token"].startswith(stored.prefix)

    me = await service_client.get("/users/me", headers={"Authorization": f"Bearer {body['token']}"})
    assert me.status_code == 200
    assert await me.get_json() == {key: body[key] for key in ("id", "name", "email", "created_at")}


async def test_an_email_in_use_is_refused_whatever_its_case(service_client: Client) -> None:
    assert (
        await service_client.post("/users", json={"name": "A", "email": "a@b.io"})
    ).status_code == 201

    response = await service_client.post("/users", json={"name": "B", "email": "A@B.IO"})

    assert response.status_code == 409
    assert _error(await response.get_json())["code"] == "email_taken"


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"name": "", "email": "a@b.io"}, ["name"]),
        ({"name": "x" * 101, "email": "a@b.io"}, ["name"]),
        ({"name": "Ada", "email": "not-an-email"}, ["email"]),
        ({"name": 5, "email": None}, ["name", "email"]),
        ({"email": "a@b.io"}, ["name"]),
        ({"name": "Ada", "email": "a@b.io", "admin": True}, ["admin"]),
        ([1, 2], ["body"]),
    ],
)
async def test_a_body_that_fails_validation_is_a_422_naming_the_fields(
    service_client: Client, body: Any, fields: list[str]
) -> None:
    response = await service_client.post("/users", json=body)

    assert response.status_code == 422
    error = _error(await response.get_json())
    assert error["code"] == "validation_error"
    assert sorted({detail["field"] for detail in error["details"]}) == sorted(fields)


@pytest.mark.parametrize(
    "data",
    [b"{", b"", b"{'name': 'single quotes'}", b"\xff\xfe", b"[" * 30_000 + b"]" * 30_000],
    ids=["unclosed", "empty", "single-quotes", "not-utf8", "nested-too-deep"],
)
async def test_malformed_json_is_a_400(service_client: Client, data: bytes) -> None:
    response = await service_client.post(
        "/users", data=data, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert _error(await response.get_json())["code"] == "invalid_json"


async def test_a_body_over_64_kib_is_a_413(service_client: Client) -> None:
    name = "x" * (64 * 1024)
    response = await service_client.post("/users", json={"name": name, "email": "big@b.io"})
    assert response.status_code == 413
    assert _error(await response.get_json())["code"] == "request_entity_too_large"


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer ", "Bearer forged-token", "Basic dXNlcjpwYXNz", "token"],
)
async def test_a_missing_or_wrong_token_is_a_401(
    api: Api, service_client: Client, authorization: str | None
) -> None:
    await api.user()
    headers = {} if authorization is None else {"Authorization": authorization}
    for method, path in [("GET", "/users/me"), ("GET", "/accounts"), ("POST", "/transfers")]:
        response = await service_client.open(path, method=method, headers=headers, json={})
        assert response.status_code == 401
        assert _error(await response.get_json())["code"] == "unauthorized"


async def test_the_openapi_document_and_docs_page_are_served(service_client: Client) -> None:
    spec = await (await service_client.get("/openapi.json")).get_json()
    assert spec["openapi"].startswith("3.")
    assert {"/users", "/accounts", "/transfers", "/accounts/{account_id}/deposits"} <= set(
        spec["paths"]
    )
    deposit = spec["paths"]["/accounts/{account_id}/deposits"]["post"]
    reference = deposit["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    request_schema = spec["components"]["schemas"][reference.rsplit("/", 1)[1]]
    assert request_schema["properties"]["amount"]["maximum"] == 10**12
    assert "201" in deposit["responses"]
    docs = await service_client.get("/docs")
    assert docs.status_code == 200
    init = await service_client.get("/docs/init.js")
    assert "/openapi.json" in (await init.get_data(as_text=True))


@pytest.mark.service_committing
async def test_concurrent_registrations_of_one_email_give_one_user(service_client: Client) -> None:
    responses = await asyncio.gather(
        *(
            service_client.post(
                "/users", json={"name": f"n{n}", "email": f"{'SAME' if n % 2 else 'same'}@b.io"}
            )
            for n in range(6)
        )
    )
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [201, 409, 409, 409, 409, 409]
