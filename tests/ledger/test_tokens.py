"""API tokens: several per user, named, shown once, listed without secrets, revocable, expiring."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from quart import Quart
from quart.typing import TestClientProtocol as Client
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from service.ledger import auth
from service.ledger.models import Token, utcnow
from service.testing import Queries
from tests.ledger.conftest import Api, Caller
from tests.service_app import make_service_test_app


def _bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def _new_token(client: Client, caller: Caller, **body: Any) -> Any:
    response = await client.post("/tokens", json={"name": "ci", **body}, headers=caller.headers)
    assert response.status_code == 201, await response.get_data()
    return await response.get_json()


async def _rows(connection: AsyncConnection, user_id: int) -> list[Any]:
    query = select(Token).where(Token.user_id == user_id).order_by(Token.id)
    return list((await connection.execute(query)).all())


async def test_a_new_token_is_shown_once_stored_hashed_and_works(
    api: Api, service_client: Client, service_connection: AsyncConnection
) -> None:
    ada = await api.user()

    body = await _new_token(service_client, ada, expires_in_days=30)

    secret = body.pop("token")
    assert secret.startswith("lgr_") and len(secret) == 44
    assert body["name"] == "ci" and body["prefix"] == secret[:12]
    assert body["last_used_at"] is None
    rows = await _rows(service_connection, ada.id)
    assert len(rows) == 2  # the registration's and this one
    assert rows[1].token_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert all(secret not in str(tuple(row)) for row in rows)
    expires = rows[1].expires_at - utcnow()
    assert timedelta(days=29, hours=23) < expires <= timedelta(days=30)
    me = await service_client.get("/users/me", headers=_bearer(secret))
    assert me.status_code == 200 and (await me.get_json())["id"] == ada.id


async def test_the_list_shows_every_token_of_the_caller_and_never_a_secret(
    api: Api, service_client: Client
) -> None:
    ada, bob = await api.user("Ada"), await api.user("Bob")
    made = await _new_token(service_client, ada, name="laptop")
    await _new_token(service_client, bob, name="bob's")

    response = await service_client.get("/tokens", headers=ada.headers)

    assert response.status_code == 200
    items = (await response.get_json())["items"]
    assert [item["name"] for item in items] == ["default", "laptop"]
    assert set(items[1]) == {"id", "name", "prefix", "created_at", "last_used_at", "expires_at"}
    assert items[1]["id"] == made["id"]
    text = await response.get_data(as_text=True)
    assert made["token"] not in text and ada.token not in text


async def test_a_revoked_token_gets_401_from_every_worker_at_once(
    api: Api, service_client: Client, service_app: Quart
) -> None:
    ada = await api.user()
    spare = await _new_token(service_client, ada)
    # A second app on the same database: another worker process, as far as tokens go.
    other_worker = make_service_test_app(dict(service_app.config))
    async with other_worker.test_app():
        other = other_worker.test_client()
        assert (await other.get("/users/me", headers=_bearer(spare["token"]))).status_code == 200

        revoked = await service_client.delete(f"/tokens/{spare['id']}", headers=ada.headers)

        assert revoked.status_code == 204
        after = await other.get("/users/me", headers=_bearer(spare["token"]))
        assert after.status_code == 401
        assert (await after.get_json())["error"]["code"] == "unauthorized"
    # The caller's other token still works; the revoked one is gone from the list.
    listed = await service_client.get("/tokens", headers=ada.headers)
    assert [item["id"] for item in (await listed.get_json())["items"]] != []
    assert spare["id"] not in [item["id"] for item in (await listed.get_json())["items"]]


async def test_another_users_token_id_is_a_404_and_stays_valid(
    api: Api, service_client: Client, service_connection: AsyncConnection
) -> None:
    ada, bob = await api.user("Ada"), await api.user("Bob")
    bobs = await _new_token(service_client, bob)

    for token_id in (bobs["id"], 0, 2**31, 2**63):
        response = await service_client.delete(f"/tokens/{token_id}", headers=ada.headers)
        assert response.status_code == 404
        assert (await response.get_json())["error"]["code"] == "not_found"

    assert len(await _rows(service_connection, bob.id)) == 2
    assert (
        await service_client.get("/users/me", headers=_bearer(bobs["token"]))
    ).status_code == 200


async def test_an_expired_token_gets_401(
    api: Api, service_client: Client, service_connection: AsyncConnection
) -> None:
    ada = await api.user()
    token = await _new_token(service_client, ada, expires_in_days=1)
    assert (
        await service_client.get("/accounts", headers=_bearer(token["token"]))
    ).status_code == 200

    await service_connection.execute(
        update(Token)
        .where(Token.id == token["id"])
        .values(expires_at=utcnow() - timedelta(seconds=1))
    )

    response = await service_client.get("/accounts", headers=_bearer(token["token"]))
    assert response.status_code == 401
    assert (await response.get_json())["error"]["code"] == "unauthorized"
    assert (await service_client.get("/accounts", headers=ada.headers)).status_code == 200


@pytest.mark.parametrize(
    "body",
    [{}, {"name": ""}, {"name": "x", "expires_in_days": 0}, {"name": "x", "expires_in_days": 3651}],
)
async def test_a_bad_token_request_is_a_422_and_issues_nothing(
    api: Api, service_client: Client, service_connection: AsyncConnection, body: dict[str, Any]
) -> None:
    ada = await api.user()

    response = await service_client.post("/tokens", json=body, headers=ada.headers)

    assert response.status_code == 422
    assert len(await _rows(service_connection, ada.id)) == 1


@pytest.fixture
def fresh_touches() -> Iterator[None]:
    auth._scheduled.clear()
    yield
    auth._scheduled.clear()


async def _last_used(connection: AsyncConnection, token_id: int) -> Any:
    return await connection.scalar(select(Token.last_used_at).where(Token.id == token_id))


async def test_authentication_is_one_query_and_last_used_at_is_written_at_most_once_a_minute(
    api: Api,
    service_client: Client,
    service_connection: AsyncConnection,
    service_queries: Queries,
    fresh_touches: None,
) -> None:
    ada = await api.user()
    token_id = (await _rows(service_connection, ada.id))[0].id
    assert await _last_used(service_connection, token_id) is None

    with service_queries.count() as first:
        assert (await service_client.get("/tokens", headers=ada.headers)).status_code == 200
    used = await _last_used(service_connection, token_id)
    assert used is not None and utcnow() - used < timedelta(seconds=30)
    with service_queries.count() as later:
        for _ in range(3):
            assert (await service_client.get("/tokens", headers=ada.headers)).status_code == 200

    # One SELECT of the token's few columns, the route's own query, and (the first time
    # only) the UPDATE of last_used_at, in a unit of work of its own after the request.
    assert [query.statement.split()[0] for query in first] == ["SELECT", "SELECT", "UPDATE"]
    assert "FROM tokens" in first[0].statement and "users" not in first[0].statement
    assert [query.statement.split()[0] for query in later] == ["SELECT", "SELECT"] * 3
    assert await _last_used(service_connection, token_id) == used

    # A minute later, the next use is recorded again.
    await service_connection.execute(
        update(Token).where(Token.id == token_id).values(last_used_at=used - timedelta(minutes=2))
    )
    auth._scheduled.clear()  # as if this process had not touched it within the minute
    assert (await service_client.get("/tokens", headers=ada.headers)).status_code == 200
    assert await _last_used(service_connection, token_id) > used


async def test_registration_and_the_cli_and_the_factory_still_give_a_working_token(
    api: Api, service_client: Client
) -> None:
    from service.ledger.factories import UserFactory

    user, secret = await UserFactory.create_with_token()
    assert secret.startswith("lgr_")
    me = await service_client.get("/users/me", headers=_bearer(secret))
    assert (await me.get_json())["id"] == user.id


@pytest.mark.service_committing
async def test_when_serving_last_used_at_is_written_by_a_background_task_after_the_request(
    service_app: Quart, service_engine: Any, fresh_touches: None
) -> None:
    app = make_service_test_app({**service_app.config, "JOBS_BACKEND": "background"})
    async with app.test_app():
        client = app.test_client()
        registered = await client.post("/users", json={"name": "Bg", "email": "bg@example.com"})
        token = (await registered.get_json())["token"]

        response = await client.get("/tokens", headers=_bearer(token))
        assert response.status_code == 200
        token_id = (await response.get_json())["items"][0]["id"]
        # The write is a task of its own, which the request did not wait for (the app's
        # other background tasks, the jobs' sweeper among them, run until it stops).
        used = None
        async with asyncio.timeout(10):
            while used is None:
                async with service_engine.connect() as connection:
                    used = await _last_used(connection, token_id)
                await asyncio.sleep(0.05)

    assert used is not None and utcnow() - used < timedelta(minutes=1)


async def test_a_user_holds_at_most_max_tokens(
    api: Api, service_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The review minted 5,000 tokens in 15 s, and spread requests over them.
    monkeypatch.setattr(auth, "MAX_TOKENS", 3)
    ada = await api.user()
    made = [await _new_token(service_client, ada, name=f"t{n}") for n in range(2)]

    refused = await service_client.post("/tokens", json={"name": "one more"}, headers=ada.headers)
    error = (await refused.get_json())["error"]
    revoked = await service_client.delete(f"/tokens/{made[0]['id']}", headers=ada.headers)
    again = await service_client.post("/tokens", json={"name": "one more"}, headers=ada.headers)

    assert (refused.status_code, error["code"]) == (422, "too_many_tokens")
    assert "revoke" in error["message"]
    assert (revoked.status_code, again.status_code) == (204, 201)


@pytest.mark.service_committing
async def test_concurrent_requests_cannot_exceed_max_tokens(
    api: Api, service_client: Client, monkeypatch: pytest.MonkeyPatch, ledger_reader: Any
) -> None:
    monkeypatch.setattr(auth, "MAX_TOKENS", 3)
    ada = await api.user()  # holds one

    responses = await asyncio.gather(
        *(
            service_client.post("/tokens", json={"name": f"t{n}"}, headers=ada.headers)
            for n in range(8)
        )
    )

    assert sorted(response.status_code for response in responses) == [201] * 2 + [422] * 6
    async with ledger_reader.connect() as fresh:
        assert len(await _rows(fresh, ada.id)) == 3


async def test_the_list_is_paged(api: Api, service_client: Client) -> None:
    ada = await api.user()
    for n in range(4):
        await _new_token(service_client, ada, name=f"t{n}")

    names: list[str] = []
    cursor = ""
    pages = 0
    while True:
        response = await service_client.get(f"/tokens?limit=2{cursor}", headers=ada.headers)
        assert response.status_code == 200
        page = await response.get_json()
        names += [item["name"] for item in page["items"]]
        pages += 1
        if page["next_cursor"] is None:
            break
        cursor = f"&cursor={page['next_cursor']}"

    assert names == ["default", "t0", "t1", "t2", "t3"] and pages == 3
    too_many = await service_client.get("/tokens?limit=101", headers=ada.headers)
    assert too_many.status_code == 422
