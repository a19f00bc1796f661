"""The ledger benchmarks' data, made through the public HTTP API every version shares.

50 users with 2 USD accounts each, every account funded, as issue 12 measures
them. Each server gets the same requests in the same order; what differs (ids,
tokens) is kept per server and handed to wrk in a file, one user a line.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import httpx

USERS = 50
FUNDS = 10**10
"""Cents on each account: the benchmarks' deposits only add, and transfers of 1 cent alternate."""


@dataclass(frozen=True)
class Customer:
    token: str
    accounts: tuple[int, int]


async def _seed_one(base_url: str, users: int, tag: str) -> list[Customer]:
    customers = []
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        for number in range(users):
            user = {"name": f"Bench {number}", "email": f"bench{number}.{tag}@example.com"}
            made = await client.post("/users", json=user)
            made.raise_for_status()
            headers = {"Authorization": f"Bearer {made.json()['token']}"}
            accounts = []
            for name in ("Checking", "Savings"):
                account = await client.post(
                    "/accounts", json={"name": name, "currency": "USD"}, headers=headers
                )
                account.raise_for_status()
                accounts.append(int(account.json()["id"]))
                funded = await client.post(
                    f"/accounts/{accounts[-1]}/deposits", json={"amount": FUNDS}, headers=headers
                )
                funded.raise_for_status()
            customers.append(Customer(made.json()["token"], (accounts[0], accounts[1])))
    return customers


async def seed(base_urls: list[str], users: int = USERS, tag: str = "x") -> list[list[Customer]]:
    """The same users, accounts and deposits on each server (concurrently across servers)."""
    return list(await asyncio.gather(*(_seed_one(url, users, tag) for url in base_urls)))


def write_customers(customers: list[Customer], path: Path) -> Path:
    """``token account account`` a line: what the wrk scripts rotate through."""
    path.write_text("".join(f"{c.token} {c.accounts[0]} {c.accounts[1]}\n" for c in customers))
    return path
