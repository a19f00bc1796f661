"""Test data factories (polyfactory) that save through the active-record API.

``await UserFactory.create_async(name="Ada")`` builds a user with plausible
values for every other field and saves it with ``Model.save()``, inside the
current unit of work (a savepoint) or, in a test body, a unit of work of its
own; in the plugin's rolled-back tests that commit joins the test's transaction.
Build without saving with ``UserFactory.build()``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC
from typing import Any, Generic, TypeVar

from polyfactory import PostGenerated, Use
from polyfactory.factories.sqlalchemy_factory import SQLAlchemyFactory
from polyfactory.persistence import AsyncPersistenceProtocol

from service.db import Model, UTCDateTime, unit_of_work
from service.ledger.auth import issue
from service.ledger.models import Account, User, utcnow

__all__ = ["AccountFactory", "ActiveRecordFactory", "ActiveRecordPersistence", "UserFactory"]

M = TypeVar("M", bound=Model)

_numbers = itertools.count(1)


class ActiveRecordPersistence(AsyncPersistenceProtocol[Any]):
    """Saves with ``Model.save()``: flushed at once, so a bad row fails at the factory call."""

    async def save(self, data: Any) -> Any:
        async with unit_of_work():
            await data.save()
        return data

    async def save_many(self, data: list[Any]) -> list[Any]:
        async with unit_of_work():
            for item in data:
                await item.save()
        return data


class ActiveRecordFactory(SQLAlchemyFactory[M], Generic[M]):
    """Base factory for the service's models; primary keys come from the database."""

    __is_base_factory__ = True
    __async_persistence__ = ActiveRecordPersistence
    __set_primary_key__ = False
    __set_foreign_keys__ = False  # pass them: AccountFactory.create_async(user_id=user.id)
    __set_relationships__ = False  # no related rows made up: create them, and pass their ids
    __check_model__ = False

    @classmethod
    def get_sqlalchemy_types(cls) -> dict[Any, Callable[[], Any]]:
        # UTCDateTime refuses naive datetimes, which is all polyfactory would make of it.
        return {
            **super().get_sqlalchemy_types(),
            UTCDateTime: lambda: cls.__faker__.date_time(tzinfo=UTC),
        }


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
