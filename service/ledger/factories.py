"""Test data factories of the ledger's models (``service.db.factories`` underneath).

``await UserFactory.create_async(name="Ada")`` builds a user with plausible values
for every other field and saves it; ``UserFactory.create_with_token()`` also gives
an API token to call the API as them.
"""

from __future__ import annotations

import itertools
from typing import Any

from polyfactory import PostGenerated, Use

from service.db import unit_of_work
from service.db.factories import ActiveRecordFactory
from service.ledger.auth import issue
from service.ledger.models import Account, User, utcnow

__all__ = ["AccountFactory", "UserFactory"]

_numbers = itertools.count(1)


class UserFactory(ActiveRecordFactory[User]):
    """A user; ``create_with_token()`` also returns the API token to call the API as them."""

    name = Use(lambda: f"User {next(_numbers)}")
    email = Use(lambda: f"user{next(_numbers)}@example.com")
    email_key = PostGenerated(lambda _, values: values["email"].lower())
    created_at = Use(utcnow)

    @classmethod
    async def create_with_token(cls, **kwargs: Any) -> tuple[User, str]:
        """A saved user and the secret of an API token of theirs (saved too)."""
        user = await cls.create_async(**kwargs)
        async with unit_of_work():
            _, secret = await issue(user.id, "factory")
        return user, secret


class AccountFactory(ActiveRecordFactory[Account]):
    """An empty account; pass ``user_id``. Money moves through the API, so entries match."""

    name = Use(lambda: f"Account {next(_numbers)}")
    currency = "USD"
    balance = 0
    created_at = Use(utcnow)
