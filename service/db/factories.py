"""Test data factories (polyfactory) that save through the active-record API.

``class AuthorFactory(ActiveRecordFactory[Author]): ...``, then
``await AuthorFactory.create_async(name="Ada")`` builds an author with plausible
values for every other field and saves it with ``Model.save()``, inside the
current unit of work (a savepoint) or, in a test body, a unit of work of its
own; in the plugin's rolled-back tests that commit joins the test's transaction.
Build without saving with ``AuthorFactory.build()``. It knows no model of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC
from typing import Any, Generic, TypeVar

from polyfactory.factories.sqlalchemy_factory import SQLAlchemyFactory
from polyfactory.persistence import AsyncPersistenceProtocol

from service.db import Model, UTCDateTime, unit_of_work

__all__ = ["ActiveRecordFactory", "ActiveRecordPersistence"]

M = TypeVar("M", bound=Model)


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
    """Base factory for ``Model`` subclasses; primary keys come from the database."""

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
