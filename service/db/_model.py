"""The declarative base with async Active Record methods."""

from __future__ import annotations

import inspect as pyinspect
from collections.abc import Mapping
from typing import Any, ClassVar, Self, TypeVar

from sqlalchemy import MetaData
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncAttrs
from sqlalchemy.orm import DeclarativeBase, QueryableAttribute

from service.db._loading import relationship_names
from service.db._query import Query
from service.db._session import session
from service.db._unit_of_work import unit_of_work

__all__ = ["Model"]

_M = TypeVar("_M", bound="Model")

# Stable constraint names, so that Alembic migrations can refer to them.
_NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class _QueryDescriptor:
    def __get__(self, instance: object, owner: type[_M]) -> Query[_M]:
        return Query(owner)


_RESERVED = frozenset(
    {
        "awaitable_attrs",
        "create",
        "delete",
        "get",
        "get_or_create",
        "load",
        "query",
        "save",
        "update",
        "update_or_create",
    }
)


class Model(AsyncAttrs, DeclarativeBase):
    """The declarative base of every model, with async Active Record methods.

    All of them work in the current task's unit of work and never commit:
    the unit of work does, when it succeeds.
    """

    metadata = MetaData(naming_convention=_NAMING_CONVENTION)

    query: ClassVar[_QueryDescriptor] = _QueryDescriptor()
    """``await User.query.filter_by(name="Foo").all()``"""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        shadowing = sorted(
            {
                name
                for klass in cls.__mro__
                if klass not in Model.__mro__  # the class, its bases and its mixins
                for name in _RESERVED
                if name in pyinspect.get_annotations(klass)
                or (name in klass.__dict__ and not _is_method(klass.__dict__[name]))
            }
        )
        if shadowing:
            raise TypeError(
                f"{cls.__name__} declares {', '.join(map(repr, shadowing))}, which would shadow "
                f"Model's method of that name. Rename the attribute and keep the column name "
                f'with mapped_column("{shadowing[0]}", ...).'
            )
        super().__init_subclass__(**kwargs)

    async def save(self) -> Self:
        """Add to the session and flush, so a database error surfaces here.

        A failure inside a savepoint (``async with unit_of_work():`` in a unit of
        work) undoes that savepoint only, when its block ends. Outside any, it
        rolls back the whole unit of work so far: the session stays usable, but
        if it had written, the unit can no longer commit (``RolledBackError``).
        """
        session.add(self)
        try:
            await session.flush()
        except Exception:
            if self in session.new:  # refused before the flush began: not left to autoflush
                session.expunge(self)
            raise
        return self

    async def update(self, **fields: Any) -> Self:
        """Set attributes, then save. An unknown field raises before anything is written."""
        mapped = type(self).__mapper__.attrs.keys()
        unknown = sorted(set(fields) - set(mapped))
        if unknown:
            raise TypeError(f"{type(self).__name__} has no field {', '.join(map(repr, unknown))}")
        for name, value in fields.items():
            setattr(self, name, value)
        return await self.save()

    async def delete(self) -> None:
        """Delete and flush; a failure is contained as by ``save()``."""
        await session.delete(self)
        await session.flush()

    async def load(self, *relationships: QueryableAttribute[Any] | str) -> Self:
        """Load these relationships of this object now: ``await book.load(Book.author)``.

        One that is already loaded is left as it is (no query).
        """
        for name in relationship_names(type(self), relationships):
            await getattr(self.awaitable_attrs, name)
        return self

    @classmethod
    async def create(cls, **fields: Any) -> Self:
        """``await User.create(name="Foo")``: construct, then save."""
        return await cls(**fields).save()

    @classmethod
    async def get_or_create(
        cls, defaults: Mapping[str, Any] | None = None, **lookup: Any
    ) -> tuple[Self, bool]:
        """The row matching ``lookup``, or a new one of ``lookup`` and ``defaults``: (row, made).

        Safe when another request makes the same row at once: the INSERT runs in a
        savepoint, so its unique violation undoes that savepoint only, and the row
        the other one made is returned. ``lookup`` must match a unique constraint.
        """
        found = await cls.query.filter_by(**lookup).first()
        if found is not None:
            return found, False
        try:
            async with unit_of_work():  # a savepoint: it contains its own failure
                made = await cls(**lookup, **(defaults or {})).save()
        except IntegrityError:
            found = await cls.query.filter_by(**lookup).first()
            if found is None:
                raise  # another constraint than the lookup's
            return found, False
        return made, True

    @classmethod
    async def update_or_create(
        cls, defaults: Mapping[str, Any] | None = None, **lookup: Any
    ) -> tuple[Self, bool]:
        """The row matching ``lookup``, locked and updated with ``defaults``; or a new one."""
        found = await cls.query.filter_by(**lookup).with_for_update().first()
        if found is None:
            made, created = await cls.get_or_create(defaults, **lookup)
            if created:
                return made, True
            found = await cls.query.filter_by(**lookup).with_for_update().first()
            assert found is not None
        return await found.update(**(defaults or {})), False

    @classmethod
    async def get(cls, pk: Any) -> Self | None:
        """The instance with this primary key, or ``None``."""
        return await session.get(cls, pk)


def _is_method(value: object) -> bool:
    return pyinspect.isfunction(value) or isinstance(value, classmethod | staticmethod)
