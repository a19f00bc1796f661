"""Rate limits: failed authentications and registrations per client address, requests per token.

The plugin's app has them off (a suite registers many users from one address);
these tests make apps of their own with small limits, on the same database.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
import redis
from quart import Quart
from quart.typing import TestClientProtocol as Client

from tests.service_app import make_service_test_app

REDIS_URL = os.environ.get("TEST_RATE_LIMIT_REDIS_URL", "redis://127.0.0.1:6379/14")
LIMITS = {
    "RATE_LIMIT_ENABLED": True,
    "RATE_LIMIT_FAILED_AUTH": "3/minute",
    "RATE_LIMIT_REGISTRATIONS": "2/hour",
    "RATE_LIMIT_PER_TOKEN": "5/minute",
}
HERE = {"client": ("203.0.113.7", 40000)}
ELSEWHERE = {"client": ("198.51.100.9", 40000)}

Served = Callable[..., AbstractAsyncContextManager[Client]]


@pytest.fixture
def limited(service_app: Quart) -> Served:
    """``async with limited(**config) as client``: an app with the limits on, serving."""

    @asynccontextmanager
    async def serve(**config: Any) -> AsyncIterator[Client]:
        app = make_service_test_app({**service_app.config, **LIMITS, **config})
        async with app.test_app():
            yield app.test_client()

    return serve


async def _register(client: Client, n: int, where: dict[str, Any] = HERE) -> Any:
    return await client.post(
        "/users", json={"name": "R", "email": f"r{n}@example.com"}, scope_base=where
    )


def _assert_limited(response: Any, body: Any) -> None:
    assert response.status_code == 429
    assert body["error"]["code"] == "rate_limited" and body["error"]["message"]
    assert 1 <= int(response.headers["Retry-After"]) <= 3600
    assert response.headers["Content-Type"] == "application/json"


async def test_failed_authentications_are_limited_per_client_address(limited: Served) -> None:
    async with limited() as client:
        token = (await (await _register(client, 1, ELSEWHERE)).get_json())["token"]
        wrong = {"Authorization": "Bearer lgr_wrong"}
        statuses = [
            (await client.get("/users/me", headers=wrong, scope_base=HERE)).status_code
            for _ in range(3)
        ]
        refused = await client.get("/users/me", headers=wrong, scope_base=HERE)
        # Once over the limit, that address is refused even with a valid token...
        valid = {"Authorization": f"Bearer {token}"}
        also_refused = await client.get("/users/me", headers=valid, scope_base=HERE)
        # ...while another address is not.
        elsewhere = await client.get("/users/me", headers=valid, scope_base=ELSEWHERE)

        assert statuses == [401, 401, 401]
        _assert_limited(refused, await refused.get_json())
        assert also_refused.status_code == 429
        assert elsewhere.status_code == 200


async def test_registrations_are_limited_per_client_address(limited: Served) -> None:
    async with limited() as client:
        statuses = [(await _register(client, n)).status_code for n in range(2)]
        refused = await _register(client, 2)
        elsewhere = await _register(client, 3, ELSEWHERE)

    assert statuses == [201, 201]
    _assert_limited(refused, await refused.get_json())
    assert elsewhere.status_code == 201


async def test_requests_are_limited_per_token(limited: Served) -> None:
    async with limited() as client:
        first = (await (await _register(client, 1)).get_json())["token"]
        second = (await (await _register(client, 2)).get_json())["token"]
        one = {"Authorization": f"Bearer {first}"}
        statuses = [
            (await client.get("/accounts", headers=one, scope_base=HERE)).status_code
            for _ in range(5)
        ]
        refused = await client.get("/accounts", headers=one, scope_base=HERE)
        other_token = await client.get(
            "/accounts", headers={"Authorization": f"Bearer {second}"}, scope_base=HERE
        )

    assert statuses == [200] * 5
    _assert_limited(refused, await refused.get_json())
    assert other_token.status_code == 200


async def test_rate_limit_enabled_false_turns_every_limit_off(limited: Served) -> None:
    async with limited(RATE_LIMIT_ENABLED=False) as client:
        registered = [(await _register(client, n)).status_code for n in range(4)]
        wrong = [
            (await client.get("/users/me", headers={"Authorization": "Bearer x"})).status_code
            for _ in range(6)
        ]

    assert registered == [201] * 4
    assert wrong == [401] * 6


@pytest.fixture
def redis_storage() -> Iterator[str]:
    """Database 14 of the local Redis, emptied of limits' counters before and after."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as error:
        client.close()
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis at {REDIS_URL} is unreachable (CI=true: a failure): {error}")
        pytest.skip(f"Redis at {REDIS_URL} is unreachable: {error}")

    def empty() -> None:
        for key in client.scan_iter("LIMITS:*"):
            client.delete(key)

    empty()
    try:
        yield REDIS_URL
    finally:
        empty()
        client.close()


async def test_with_redis_the_limits_are_shared_by_every_worker(
    limited: Served, redis_storage: str
) -> None:
    # Two apps, two workers (or hosts) as far as the counters go: they share them in Redis.
    async with (
        limited(RATE_LIMIT_STORAGE_URL=redis_storage) as one,
        limited(RATE_LIMIT_STORAGE_URL=redis_storage) as two,
    ):
        wrong = {"Authorization": "Bearer lgr_wrong"}
        first = [
            (await one.get("/users/me", headers=wrong, scope_base=HERE)).status_code
            for _ in range(2)
        ]
        third = await two.get("/users/me", headers=wrong, scope_base=HERE)
        refused = await two.get("/users/me", headers=wrong, scope_base=HERE)
        again = await one.get("/users/me", headers=wrong, scope_base=HERE)

    assert first == [401, 401] and third.status_code == 401
    _assert_limited(refused, await refused.get_json())
    assert again.status_code == 429
    counters = redis.Redis.from_url(redis_storage)
    try:
        assert any(b"failed_auth" in key for key in counters.scan_iter("LIMITS:*"))
    finally:
        counters.close()


async def test_an_unreachable_redis_lets_requests_through(limited: Served) -> None:
    async with limited(RATE_LIMIT_STORAGE_URL="redis://127.0.0.1:1/0") as client:
        response = await _register(client, 1)

    assert response.status_code == 201
