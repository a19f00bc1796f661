"""Idempotency-Key: a repeat replays the first answer and has no second effect."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from quart.typing import TestClientProtocol as Client
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db import unit_of_work
from service.ledger import maintenance
from service.ledger.idempotency import KEY_LIFETIME
from service.ledger.models import IdempotencyKey, utcnow
from tests.ledger.conftest import Api, Caller, Ledger


def _keyed(caller: Caller, key: str) -> dict[str, str]:
    return {**caller.headers, "Idempotency-Key": key}


async def test_a_repeat_replays_the_first_answer_and_writes_once(
    api: Api, service_client: Client, ledger: Ledger
) -> None:
    ada = await api.user()
    source, target = await api.account(ada), await api.account(ada)
    requests = [
        (f"/accounts/{source}/deposits", {"amount": 500}),
        (f"/accounts/{source}/withdrawals", {"amount": 100}),
        ("/transfers", {"from_account_id": source, "to_account_id": target, "amount": 50}),
    ]
    for number, (path, body) in enumerate(requests):
        headers = _keyed(ada, f"key-{number}")
        first = await service_client.post(path, json=body, headers=headers)
        repeat = await service_client.post(path, json=body, headers=headers)

        assert first.status_code == repeat.status_code == 201
        assert await first.get_json() == await repeat.get_json()
        assert repeat.headers["Idempotent-Replayed"] == "true"

    assert (await ledger.balance(source), await ledger.balance(target)) == (350, 50)
    assert await ledger.entries() == 4
    assert await ledger.transfers() == 1


async def test_the_same_key_with_another_body_is_refused(
    api: Api, service_client: Client, ledger: Ledger
) -> None:
    ada = await api.user()
    account = await api.account(ada)
    path = f"/accounts/{account}/deposits"
    assert (
        await service_client.post(path, json={"amount": 1}, headers=_keyed(ada, "k"))
    ).status_code == 201

    response = await service_client.post(path, json={"amount": 2}, headers=_keyed(ada, "k"))

    assert response.status_code == 422
    assert (await response.get_json())["error"]["code"] == "idempotency_key_reused"
    assert await ledger.balance(account) == 1


async def test_keys_belong_to_their_user(api: Api, service_client: Client, ledger: Ledger) -> None:
    ada, bob = await api.user(), await api.user()
    hers, his = await api.account(ada), await api.account(bob)
    for caller, account in ((ada, hers), (bob, his)):
        response = await service_client.post(
            f"/accounts/{account}/deposits", json={"amount": 7}, headers=_keyed(caller, "shared")
        )
        assert response.status_code == 201
    assert (await ledger.balance(hers), await ledger.balance(his)) == (7, 7)


async def test_a_failed_request_leaves_its_key_free_for_a_retry(
    api: Api, service_client: Client, ledger: Ledger
) -> None:
    ada = await api.user()
    account = await api.account(ada)
    path, headers = f"/accounts/{account}/withdrawals", _keyed(ada, "retry")

    refused = await service_client.post(path, json={"amount": 10}, headers=headers)
    await api.deposit(ada, account, 10)
    retried = await service_client.post(path, json={"amount": 10}, headers=headers)

    assert (refused.status_code, retried.status_code) == (422, 201)
    assert await ledger.balance(account) == 0


@pytest.mark.service_committing
async def test_concurrent_repeats_apply_once(
    api: Api, service_client: Client, ledger: Ledger
) -> None:
    ada = await api.user()
    source, target = await api.account(ada), await api.account(ada)
    await api.deposit(ada, source, 1000)
    body = {"from_account_id": source, "to_account_id": target, "amount": 100}

    responses = await asyncio.gather(
        *(
            service_client.post("/transfers", json=body, headers=_keyed(ada, "once"))
            for _ in range(8)
        )
    )

    assert {response.status_code for response in responses} == {201}
    bodies = [await response.get_json() for response in responses]
    assert all(body == bodies[0] for body in bodies)
    assert await ledger.transfers() == 1
    assert (await ledger.balance(source), await ledger.balance(target)) == (900, 100)


@pytest.mark.parametrize("key", ["", "k" * 256])
async def test_a_key_of_the_wrong_length_is_a_422(
    api: Api, service_client: Client, ledger: Ledger, key: str
) -> None:
    ada = await api.user()
    account = await api.account(ada)
    response = await service_client.post(
        f"/accounts/{account}/deposits", json={"amount": 5}, headers=_keyed(ada, key)
    )
    assert response.status_code == 422
    assert (await response.get_json())["error"]["details"][0]["field"] == "Idempotency-Key"
    assert await ledger.entries() == 0


ROUNDS = 4
REPEATS = 16


async def _age(ledger_reader: AsyncEngine, user_id: int, key: str) -> None:
    """Make the key's row older than its lifetime, through a connection of the test's own."""
    async with ledger_reader.begin() as connection:
        await connection.execute(
            update(IdempotencyKey)
            .where(IdempotencyKey.user_id == user_id, IdempotencyKey.key == key)
            .values(created_at=utcnow() - KEY_LIFETIME - timedelta(minutes=5))
        )


@unit_of_work()
async def _prune() -> None:
    await maintenance.prune_idempotency_keys()


@pytest.mark.service_committing
@pytest.mark.parametrize("prune", [False, True], ids=["expired", "expired-and-pruned"])
async def test_concurrent_repeats_of_an_expired_key_apply_once(
    api: Api, service_client: Client, ledger: Ledger, ledger_reader: AsyncEngine, prune: bool
) -> None:
    # The review's attack: a key aged past its lifetime (not yet pruned), then many
    # concurrent repeats; the money moved twice when one repeat deleted, by its primary
    # key alone, the fresh claim another had just committed. Each round must apply once,
    # also with the hourly prune running at the same time.
    ada = await api.user()
    account = await api.account(ada)
    await api.deposit(ada, account, 100_000)
    path, body = f"/accounts/{account}/withdrawals", {"amount": 10}
    first = await service_client.post(path, json=body, headers=_keyed(ada, "aged"))
    assert first.status_code == 201

    for _ in range(ROUNDS):
        await _age(ledger_reader, ada.id, "aged")
        pruning = [_prune()] if prune else []
        outcomes = await asyncio.gather(
            *pruning,
            *(
                service_client.post(path, json=body, headers=_keyed(ada, "aged"))
                for _ in range(REPEATS)
            ),
        )
        responses = outcomes[len(pruning) :]
        assert [response.status_code for response in responses] == [201] * REPEATS
        fresh = [r for r in responses if "Idempotent-Replayed" not in r.headers]
        assert len(fresh) == 1  # one applied it; every other replayed that answer
        bodies = [await response.get_json() for response in responses]
        assert all(answer == bodies[0] for answer in bodies)

    assert await ledger.entries() == 2 + ROUNDS  # the deposit, the first, one per round
    assert await ledger.balance(account) == 100_000 - 10 * (1 + ROUNDS)
