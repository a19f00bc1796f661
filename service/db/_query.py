"""``Model.query``: an immutable ``select()`` of one model, run in the current unit of work.

Building a statement costs more than running it from SQLAlchemy's compiled cache:
``select(User).filter_by(id=1)`` coerces every expression anew, every call. So
a query whose every step is structural (``filter_by`` by field names, ``order_by``
a column, ``limit``, a relationship to join or load, a lock) builds each step's
statement once per process, with bound parameters for the values, and only
carries the values along. A step whose clauses hold values of their own
(``where(User.age > 30)``) is built as written, and so is everything after it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Generic, TypeVar

from sqlalchemy import Integer, Select, bindparam, delete, func, inspect, select, update
from sqlalchemy.orm import QueryableAttribute
from sqlalchemy.sql._typing import (
    _ColumnExpressionArgument,
    _ColumnExpressionOrStrLabelArgument,
    _FromClauseArgument,
    _OnClauseArgument,
)
from sqlalchemy.sql.base import ExecutableOption

from service.db._loading import eager, relationship_names
from service.db._pages import KeysetPage, Page
from service.db._session import session

__all__ = ["NotFoundError", "Query"]

_M = TypeVar("_M")

_CACHE_LIMIT = 4096
_statements: dict[tuple[Any, ...], Select[Any]] = {}
"""Each structural chain of steps, by its steps: the statement it builds."""


class NotFoundError(LookupError):
    """No row matched ``get_or_404()``, ``first_or_404()`` or ``one_or_404()``.

    The Quart binding answers it with a 404, rendered by the app's own error handlers;
    anywhere else it is an error like any other.
    """

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


class Query(Generic[_M]):
    """An immutable ``select()`` of one model, run in the current unit of work.

    Every chaining method returns a new query; ``all()``, ``first()``, ``one()``,
    ``count()``, ``exists()`` and ``get()`` are awaited.
    """

    __slots__ = ("_key", "_params", "_plain", "_shape", "_statement", "model")

    def __init__(self, model: type[_M], statement: Select[Any] | None = None) -> None:
        self.model = model
        self._plain = statement is None
        self._key: tuple[Any, ...] | None = (model,) if statement is None else None
        self._params: dict[str, Any] = {}
        self._shape: frozenset[str] = frozenset()
        """What the steps so far did beyond filtering: "ordered", "limited", "joined"."""
        if statement is None:
            statement = _statements.get((model,))
            if statement is None:
                statement = _statements[(model,)] = select(model)
        self._statement: Select[Any] = statement

    @property
    def statement(self) -> Select[Any]:
        """The ``select()``, with the query's values bound into it."""
        return self._statement.params(self._params) if self._params else self._statement

    # Building --------------------------------------------------------------------------------

    def _step(
        self,
        step: tuple[Any, ...] | None,
        build: Any,
        values: dict[str, Any] | None = None,
        shape: str | None = None,
    ) -> Query[_M]:
        """A new query of ``build(statement)``, cached under ``step`` while all is structure."""
        query: Query[_M] = Query.__new__(Query)
        query.model, query._plain = self.model, False
        query._shape = self._shape | {shape} if shape else self._shape
        query._params = {**self._params, **values} if values else self._params
        key = None if self._key is None or step is None else (*self._key, step)
        statement = _statements.get(key) if key is not None else None
        if statement is None:
            statement = build(self._statement)
            if key is not None and len(_statements) < _CACHE_LIMIT:
                _statements[key] = statement
        query._key, query._statement = key, statement
        return query

    def _names(self, count: int) -> list[str]:
        start = len(self._params)
        return [f"service_db_q{number}" for number in range(start, start + count)]

    def where(self, *clauses: _ColumnExpressionArgument[bool]) -> Query[_M]:
        return self._step(None, lambda statement: statement.where(*clauses))

    def filter(self, *clauses: _ColumnExpressionArgument[bool]) -> Query[_M]:
        """``where()``, under the name Flask-SQLAlchemy's users know."""
        return self.where(*clauses)

    def filter_by(self, **values: Any) -> Query[_M]:
        if any(value is None for value in values.values()):  # IS NULL, not = NULL: as written
            return self._step(None, lambda statement: statement.filter_by(**values))
        fields = sorted(values)
        names = self._names(len(fields))

        def build(statement: Select[Any]) -> Select[Any]:
            bound = zip(fields, names, strict=True)
            return statement.filter_by(**{field: bindparam(name) for field, name in bound})

        bound = {n: values[f] for f, n in zip(fields, names, strict=True)}
        return self._step(("filter_by", tuple(fields)), build, bound)

    def order_by(self, *clauses: _ColumnExpressionOrStrLabelArgument[Any]) -> Query[_M]:
        return self._step(
            _structure("order_by", clauses),
            lambda statement: statement.order_by(*clauses),
            shape="ordered",
        )

    def limit(self, limit: int) -> Query[_M]:
        return self._bound("limit", limit)

    def offset(self, offset: int) -> Query[_M]:
        return self._bound("offset", offset)

    def _bound(self, what: str, value: int) -> Query[_M]:
        [name] = self._names(1)
        parameter = bindparam(name, type_=Integer)
        return self._step(
            (what,),
            lambda statement: getattr(statement, what)(parameter),
            {name: value},
            shape="limited",
        )

    def join(
        self, target: _FromClauseArgument, onclause: _OnClauseArgument | None = None
    ) -> Query[_M]:
        """``JOIN`` another model or a relationship: ``Book.query.join(Book.author).where(...)``.

        It filters and orders by the joined rows; it does not load them (see ``load()``).
        """
        step = ("join", target) if onclause is None and _hashable(target) else None
        return self._step(step, lambda statement: statement.join(target, onclause), shape="joined")

    def outerjoin(
        self, target: _FromClauseArgument, onclause: _OnClauseArgument | None = None
    ) -> Query[_M]:
        """``LEFT OUTER JOIN``: rows without a match are kept."""
        step = ("outerjoin", target) if onclause is None and _hashable(target) else None
        return self._step(
            step, lambda statement: statement.outerjoin(target, onclause), shape="joined"
        )

    def distinct(self) -> Query[_M]:
        """Each row once (``SELECT DISTINCT``), as after a join to a collection."""
        return self._step(("distinct",), lambda statement: statement.distinct(), shape="joined")

    def options(self, *options: ExecutableOption) -> Query[_M]:
        """Loader options, such as ``selectinload(User.accounts)``."""
        return self._step(None, lambda statement: statement.options(*options))

    def load(self, *relationships: QueryableAttribute[Any] | str) -> Query[_M]:
        """Load these relationships with the rows: ``Book.query.load(Book.author)``.

        A single object comes in the same query (a join), a collection in one more
        (``SELECT ... IN``), never one query per row. Reading a relationship that
        was not loaded raises ``NotLoadedError``, which names it.
        """
        names = tuple(relationship_names(self.model, relationships))
        options = eager(self.model, names)
        return self._step(("load", names), lambda statement: statement.options(*options))

    def with_for_update(self, *, nowait: bool = False, skip_locked: bool = False) -> Query[_M]:
        """Lock the selected rows until the unit of work ends (``SELECT ... FOR UPDATE``).

        Locked rows are read afresh even when already loaded: an instance from
        before the lock may hold values another transaction has since changed.
        """

        def build(statement: Select[Any]) -> Select[Any]:
            locked = statement.with_for_update(nowait=nowait, skip_locked=skip_locked)
            return locked.execution_options(populate_existing=True)

        return self._step(("lock", nowait, skip_locked), build)

    # Running ---------------------------------------------------------------------------------

    async def _scalars(self, query: Query[_M]) -> Any:
        return (await session.scalars(query._statement, query._params or None)).unique()

    async def all(self) -> list[_M]:
        return list((await self._scalars(self)).all())

    async def first(self) -> _M | None:
        first = self._step(("first",), lambda statement: statement.limit(1))
        found: _M | None = (await self._scalars(first)).first()
        return found

    async def one(self) -> _M:
        """The one row; raises ``NoResultFound`` or ``MultipleResultsFound`` otherwise."""
        found: _M = (await self._scalars(self)).one()
        return found

    async def exists(self) -> bool:
        """Whether the query matches any row (``SELECT EXISTS (...)``)."""
        exists = self._step(("exists",), lambda statement: select(statement.exists()))
        return bool(await session.scalar(exists._statement, exists._params or None))

    async def count(self) -> int:
        def build(statement: Select[Any]) -> Select[Any]:
            return select(func.count()).select_from(statement.order_by(None).subquery())

        counted = self._step(("count",), build)
        return (await session.scalar(counted._statement, counted._params or None)) or 0

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
        names = self._names(len(columns))

        def build(statement: Select[Any]) -> Select[Any]:
            pairs = zip(columns, names, strict=True)
            return statement.where(*(column == bindparam(name) for column, name in pairs))

        matching = self._step(("get",), build, dict(zip(names, values, strict=True)))
        found: _M | None = (await self._scalars(matching)).one_or_none()
        return found

    async def paginate(self, page: int = 1, per_page: int = 20) -> Page[_M]:
        """Page ``page`` (from 1) of ``per_page`` rows, with the total: two queries.

        Rows come in the query's order, else by primary key, so that pages neither
        skip nor repeat a row. For a large table prefer ``keyset()``, whose cost
        does not grow with the page number.
        """
        if page < 1 or per_page < 1:
            raise ValueError("page and per_page start at 1")
        total = await self.count()
        ordered = self if "ordered" in self._shape else self._by_primary_key()
        items = await ordered.limit(per_page).offset((page - 1) * per_page).all()
        return Page(items=items, total=total, page=page, per_page=per_page)

    async def keyset(self, *, after: Any = None, limit: int = 50) -> KeysetPage[_M]:
        """Up to ``limit`` rows whose primary key is above ``after``, in primary-key order.

        One query whatever the page; rows added meanwhile are neither skipped nor
        repeated. Needs a single-column primary key, and no order of the query's own.
        """
        if "ordered" in self._shape or "limited" in self._shape:
            raise ValueError("keyset() orders by primary key and limits itself: leave both out")
        keys = self._primary_key()
        if len(keys) != 1:
            raise ValueError(f"keyset() needs a single-column primary key; {self.model} has not")
        key = keys[0]
        query = self._by_primary_key()
        if after is not None:
            query = query.where(key > after)
        rows = await query.limit(limit + 1).all()
        more = len(rows) > limit
        items = rows[:limit]
        return KeysetPage(items=items, after=getattr(items[-1], key.key) if more else None)

    async def stream(self, *, batch: int = 1000) -> AsyncIterator[_M]:
        """The rows, a batch at a time: for more rows than memory should hold at once.

        A server-side cursor on PostgreSQL (in a transaction even in a read-only
        unit of work), batches of a cursor on SQLite. Consume it inside the unit of
        work: ``async for book in Book.query.stream(): ...``.
        """
        statement = self.statement.execution_options(yield_per=batch)
        result = await session.stream_scalars(statement)
        try:
            async for item in result:
                yield item
        finally:
            await result.close()

    async def update(self, **values: Any) -> int:
        """``UPDATE`` every matching row at once; the count. Loaded objects are kept in step."""
        statement = (
            update(self.model)
            .where(*self._criteria("update"))
            .values(**values)
            .execution_options(synchronize_session="fetch")
        )
        result = await session.execute(statement, self._params or None)
        return int(getattr(result, "rowcount", 0))

    async def delete(self) -> int:
        """``DELETE`` every matching row at once; the count. Loaded objects are kept in step."""
        statement = (
            delete(self.model)
            .where(*self._criteria("delete"))
            .execution_options(synchronize_session="fetch")
        )
        result = await session.execute(statement, self._params or None)
        return int(getattr(result, "rowcount", 0))

    def _criteria(self, what: str) -> list[Any]:
        if self._shape - {"ordered"}:
            raise ValueError(
                f"{what}() changes every row the query's filters match: it cannot honour a "
                "limit, an offset, a join or DISTINCT. Filter with where()/filter_by() only."
            )
        where = self._statement.whereclause  # its values are bound at execution
        return [] if where is None else [where]

    def _primary_key(self) -> list[Any]:
        return list(inspect(self.model).primary_key)

    def _by_primary_key(self) -> Query[_M]:
        return self.order_by(*self._primary_key())

    async def first_or_404(self, description: str | None = None) -> _M:
        """``first()``, or ``NotFoundError``: a 404 rendered by the app's error handlers."""
        return _or_404(await self.first(), self.model, description)

    async def one_or_404(self, description: str | None = None) -> _M:
        """The one matching row, or a 404; more than one raises ``MultipleResultsFound``."""
        found: _M | None = (await self._scalars(self)).one_or_none()
        return _or_404(found, self.model, description)

    async def get_or_404(self, pk: Any, description: str | None = None) -> _M:
        """``get(pk)``, or a 404 rendered by the app's error handlers."""
        return _or_404(await self.get(pk), self.model, description)


def _or_404(found: _M | None, model: type[Any], description: str | None) -> _M:
    if found is None:
        raise NotFoundError(description or f"No such {model.__name__.lower()}.")
    return found


def _hashable(target: object) -> bool:
    return isinstance(target, type | QueryableAttribute)


def _structure(step: str, clauses: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """The step's key if its clauses are pure structure (columns, no values), else None."""
    keys = []
    for clause in clauses:
        if isinstance(clause, str):
            keys.append(clause)
            continue
        key = getattr(clause, "_generate_cache_key", lambda: None)()
        if key is None or key.bindparams:
            return None
        keys.append(key.key)
    return (step, tuple(keys))
