"""Under concurrent load no money is created or destroyed, and no request fails with a 5xx."""

from __future__ import annotations

import asyncio
import random

import pytest
from quart.typing import TestClientProtocol as Client

from tests.ledger.conftest import Api, Ledger


@pytest.mark.service_committing
async def test_random_concurrent_movements_keep_the_invariants(
    api: Api, service_client: Client, ledger: Ledger
) -> None:
    ada = await api.user()
    accounts = [await api.account(ada) for _ in range(4)]
    rng = random.Random(1234)
    deposited = withdrawn = 0

    async def move() -> int:
        nonlocal deposited, withdrawn
        kind = rng.choice(["deposit", "withdrawal", "transfer", "transfer"])
        amount = rng.randint(1, 500)
        if kind == "transfer":
            source, target = rng.sample(accounts, 2)
            response = await service_client.post(
                "/transfers",
                json={"from_account_id": source, "to_account_id": target, "amount": amount},
                headers=ada.headers,
            )
        else:
            path = f"/accounts/{rng.choice(accounts)}/{kind}s"
            response = await service_client.post(path, json={"amount": amount}, headers=ada.headers)
            if response.status_code == 201:
                if kind == "deposit":
                    deposited += amount
                else:
                    withdrawn += amount
        return response.status_code

    statuses = await asyncio.gather(*(move() for _ in range(120)))

    assert set(statuses) <= {201, 422}
    assert statuses.count(201) > 60
    for account in accounts:
        assert await ledger.balance(account) == await ledger.entry_sum(account) >= 0
    assert await ledger.total() == deposited - withdrawn


@pytest.mark.service_committing
async def test_opposite_transfers_never_deadlock(
    api: Api, service_client: Client, ledger: Ledger
) -> None:
    ada = await api.user()
    first, second = await api.account(ada), await api.account(ada)
    await api.deposit(ada, first, 10_000)
    await api.deposit(ada, second, 10_000)

    async def send(source: int, target: int) -> int:
        response = await service_client.post(
            "/transfers",
            json={"from_account_id": source, "to_account_id": target, "amount": 1},
            headers=ada.headers,
        )
        return response.status_code

    statuses = await asyncio.gather(
        *(send(first, second) if n % 2 else send(second, first) for n in range(60))
    )

    assert set(statuses) == {201}
    assert (await ledger.balance(first), await ledger.balance(second)) == (10_000, 10_000)
