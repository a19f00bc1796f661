"""The declarative base with async Active Record methods, and its ``select()``-based query."""

from __future__ import annotations

import inspect as pyinspect
from typing import Any, ClassVar, Generic, Self, TypeVar

from sqlalchemy import MetaData, Select, func, inspect, select
from sqlalchemy.ext.asyncio import AsyncAttrs
from sqlalchemy.orm import DeclarativeBase, QueryableAttribute
from sqlalchemy.sql._typing import (
    _ColumnExpressionArgument,
    _ColumnExpressionOrStrLabelArgument,
    _FromClauseArgument,
    _OnClauseArgument,
)
from sqlalchemy.sql.base import ExecutableOption
from werkzeug.exceptions import NotFound

from service.db._loading import eager, relationship_names
from service.db._session import session

__all__ = ["Model", "Query"]

_M = TypeVar("_M", bound="Model")

# Stable constraint names, so that Alembic migrations can refer to them.
_NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Query(Generic[_M]):
    """An immutable ``select()`` of one model, run in the current unit of work.

    Every chaining method returns a new query; ``all()``, ``first()``,
    ``one()``, ``count()`` and ``get()`` are awaited.
    """

    __slots__ = ("_plain", "model", "statement")

    def __init__(self, model: type[_M], statement: Select[_M] | None = None) -> None:
        self.model = model
        self._plain = statement is None
        self.statement: Select[_M] = select(model) if statement is None else statement

    def _chain(self, statement: Select[_M]) -> Query[_M]:
        return Query(self.model, statement)

    def where(self, *clauses: _ColumnExpressionArgument[bool]) -> Query[_M]:
        return self._chain(self.statement.where(*clauses))

    def filter_by(self, **values: Any) -> Query[_M]:
        return self._chain(self.statement.filter_by(**values))

    def order_by(self, *clauses: _ColumnExpressionOrStrLabelArgument[Any]) -> Query[_M]:
        return self._chain(self.statement.order_by(*clauses))

    def limit(self, limit: int) -> Query[_M]:
        return self._chain(self.statement.limit(limit))

    def offset(self, offset: int) -> Query[_M]:
        return self._chain(self.statement.offset(offset))

    def join(
        self, target: _FromClauseArgument, onclause: _OnClauseArgument | None = None
    ) -> Query[_M]:
        """``JOIN`` another model or a relationship: ``Book.query.join(Book.author).where(...)``.

        It filters and orders by the joined rows; it does not load them (see ``load()``).
        """
        return self._chain(self.statement.join(target, onclause))

    def outerjoin(
        self, target: _FromClauseArgument, onclause: _OnClauseArgument | None = None
    ) -> Query[_M]:
        """``LEFT OUTER JOIN``: rows without a match are kept."""
        return self._chain(self.statement.outerjoin(target, onclause))

    def distinct(self) -> Query[_M]:
        """Each row once (``SELECT DISTINCT``), as after a join to a collection."""
        return self._chain(self.statement.distinct())

    def options(self, *options: ExecutableOption) -> Query[_M]:
        """Loader options, such as ``selectinload(User.accounts)``."""
        return self._chain(self.statement.options(*options))

    def load(self, *relationships: QueryableAttribute[Any] | str) -> Query[_M]:
        """Load these relationships with the rows: ``Book.query.load(Book.author)``.

        A single object comes in the same query (a join), a collection in one more
        (``SELECT ... IN``), never one query per row. Reading a relationship that
        was not loaded raises ``NotLoadedError``, which names it.
        """
        return self._chain(self.statement.options(*eager(self.model, relationships)))

    def with_for_update(self, *, nowait: bool = False, skip_locked: bool = False) -> Query[_M]:
        """Lock the selected rows until the unit of work ends (``SELECT ... FOR UPDATE``).

        Locked rows are read afresh even when already loaded: an instance from
        before the lock may hold values another transaction has since changed.
        """
        statement = self.statement.with_for_update(nowait=nowait, skip_locked=skip_locked)
        return self._chain(statement.execution_options(populate_existing=True))

    async def all(self) -> list[_M]:
        return list((await session.scalars(self.statement)).unique().all())

    async def first(self) -> _M | None:
        return (await session.scalars(self.statement.limit(1))).unique().first()

    async def one(self) -> _M:
        """The one row; raises ``NoResultFound`` or ``MultipleResultsFound`` otherwise."""
        return (await session.scalars(self.statement)).unique().one()

    async def exists(self) -> bool:
        """Whether the query matches any row (``SELECT EXISTS (...)``)."""
        return bool(await session.scalar(select(self.statement.exists())))

    async def first_or_404(self, description: str | None = None) -> _M:
        """``first()``, or a 404 (``NotFound``) rendered by the app's error handlers."""
        found = await self.first()
        if found is None:
            raise NotFound(description or f"No such {_readable(self.model)}.")
        return found

    async def one_or_404(self, description: str | None = None) -> _M:
        """The one matching row, or a 404; more than one raises ``MultipleResultsFound``."""
        found = (await session.scalars(self.statement)).unique().one_or_none()
        if found is None:
            raise NotFound(description or f"No such {_readable(self.model)}.")
        return found

    async def get_or_404(self, pk: Any, description: str | None = None) -> _M:
        """``get(pk)``, or a 404 rendered by the app's error handlers."""
        found = await self.get(pk)
        if found is None:
            raise NotFound(description or f"No such {_readable(self.model)}.")
        return found

    async def count(self) -> int:
        counted = select(func.count()).select_from(self.statement.order_by(None).subquery())
        return (await session.scalar(counted)) or 0

    async def get(self, pk: Any) -> _M | None:
        """The instance with this primary key, or ``None``.

        On the bare query, from the identity map when already loaded; after
        ``where()``, ``with_for_update()`` or ``options()``, through the chained
        statement, so its filters, lock and options apply.
        """
        if self._plain:
            return await session.get(self.model, pk)
        columns = inspect(self.model).primary_key
        values = pk if isinstance(pk, tuple) else (pk,)
        if len(values) != len(columns):
            raise ValueError(f"{self.model.__name__} has a primary key of {len(columns)} columns")
        matching = self.statement.where(*(c == v for c, v in zip(columns, values, strict=True)))
        return (await session.scalars(matching)).unique().one_or_none()


class _QueryDescriptor:
    def __get__(self, instance: object, owner: type[_M]) -> Query[_M]:
        return Query(owner)


_RESERVED = frozenset(
    {"awaitable_attrs", "create", "delete", "get", "load", "query", "save", "update"}
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

        If the flush fails the session is rolled back, so that it stays usable,
        and the error re-raised. The rollback undoes all of the unit of work so
        far and expires the objects it loaded: load again what you still need.
        """
        session.add(self)
        await _flush()
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
        """Delete and flush; if the flush fails the session is rolled back, as by ``save()``."""
        await session.delete(self)
        await _flush()

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
    async def get(cls, pk: Any) -> Self | None:
        """The instance with this primary key, or ``None``."""
        return await session.get(cls, pk)


def _readable(model: type[Any]) -> str:
    return model.__name__.lower()


def _is_method(value: object) -> bool:
    return pyinspect.isfunction(value) or isinstance(value, classmethod | staticmethod)


async def _flush() -> None:
    try:
        await session.flush()
    except Exception:
        # Any failed flush leaves the session needing a rollback before its next
        # use; do it now, so the handler can still answer and use the database.
        await session.rollback()
        raise
