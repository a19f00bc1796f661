"""Rate limits: failed authentications and registrations per client address, requests per user.

The plugin's app has them off (a suite registers many users from one address);
these tests make apps of their own with small limits, on the same database.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
import redis
from quart import Quart
from quart.typing import TestClientProtocol as Client

from service.testing import Queries
from tests.service_app import make_service_test_app

REDIS_URL = os.environ.get("TEST_RATE_LIMIT_REDIS_URL", "redis://127.0.0.1:6379/14")
LIMITS = {
    "RATE_LIMIT_ENABLED": True,
    "RATE_LIMIT_FAILED_AUTH": "3/minute",
    "RATE_LIMIT_REGISTRATIONS": "2/hour",
    "RATE_LIMIT_PER_USER": "5/minute",
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


async def test_requests_are_limited_per_user_whatever_token_they_use(limited: Served) -> None:
    # Minting tokens gains nothing: a user's tokens share the user's limit.
    async with limited() as client:
        first = (await (await _register(client, 1)).get_json())["token"]
        other_user = (await (await _register(client, 2)).get_json())["token"]
        one = {"Authorization": f"Bearer {first}"}
        minted = await client.post("/tokens", json={"name": "second"}, headers=one)
        two = {"Authorization": f"Bearer {(await minted.get_json())['token']}"}
        statuses = [
            (await client.get("/accounts", headers=headers, scope_base=HERE)).status_code
            for headers in (one, two, one, two)
        ]
        refused = await client.get("/accounts", headers=two, scope_base=HERE)
        elsewhere = await client.get(
            "/accounts", headers={"Authorization": f"Bearer {other_user}"}, scope_base=HERE
        )

    assert minted.status_code == 201
    assert statuses == [200] * 4  # with the minting, five requests of that user
    _assert_limited(refused, await refused.get_json())
    assert elsewhere.status_code == 200


async def test_a_burst_of_wrong_tokens_looks_up_no_more_than_the_limit(
    limited: Served, service_queries: Queries
) -> None:
    # The review's burst: 300 concurrent wrong tokens from one address reached the database
    # 254 times under a limit of 30 (each tested the limit before any failure was counted).
    burst = 60
    wrong = [{"Authorization": f"Bearer lgr_{n:040d}"} for n in range(burst)]
    async with limited() as client:
        with service_queries.count() as queries:
            responses = await asyncio.gather(
                *(client.get("/users/me", headers=headers, scope_base=HERE) for headers in wrong)
            )
    lookups = [query for query in queries if "token_hash" in query.statement]
    statuses = Counter(response.status_code for response in responses)

    assert len(lookups) <= 3  # RATE_LIMIT_FAILED_AUTH
    assert statuses[401] == len(lookups) and statuses[429] == burst - len(lookups)


async def test_what_cannot_be_a_token_is_refused_without_the_database(
    limited: Served, service_queries: Queries
) -> None:
    async with limited() as client:
        with service_queries.count() as queries:
            statuses = [
                (await client.get("/users/me", headers=headers, scope_base=HERE)).status_code
                for headers in (
                    {"Authorization": "Bearer lgr_short"},
                    {"Authorization": "Bearer " + "x" * 10_000},
                    {"Authorization": "Basic dXNlcjpwYXNz"},
                    {"Authorization": "Bearer lgr_" + "é" * 40},
                )
            ]
    assert statuses == [401, 401, 401, 429]  # and they count as failures
    assert [query for query in queries if "token_hash" in query.statement] == []


async def test_registrations_count_before_the_body_is_validated(limited: Served) -> None:
    # The review's amplification: invalid registrations were never limited, for the limit
    # was counted after validation; each cost 400 ms of CPU.
    async with limited() as client:
        invalid = [
            await client.post("/users", json={"name": "", "email": "x", "junk": 1}, scope_base=HERE)
            for _ in range(2)
        ]
        refused = await _register(client, 1)

    assert [response.status_code for response in invalid] == [422, 422]
    _assert_limited(refused, await refused.get_json())


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
