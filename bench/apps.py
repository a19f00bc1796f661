"""The apps that ``bench/uow.py`` serves under Hypercorn.

``layer_app()``: a Quart app with the unit-of-work layer (``service.db.quart.Database``)
installed and nothing else, ``DATABASE_URL`` read from the environment as the
service reads it. It carries the same two endpoints written twice:

- ``/layer/items``: on the layer, ``await BenchItem.get(pk)`` and
  ``await BenchItem(name=...).save()`` in the request's unit of work;
- ``/hand/items``: by hand, ``async with factory() as s, s.begin():`` on a plain
  ``async_sessionmaker`` bound to the very same engine.

Why not ``service.app.create_app()``: it also installs QuartSchema (which passes
every dict a handler returns through a new pydantic ``TypeAdapter``), the ledger
blueprint and a request class of its own. Those costs are the service's, not the
layer's; they would be paid by both sides and dilute the ratio. ``service_app()``
is ``create_app()`` with the same routes, so that ``GET /nodb`` can show what the
whole service app costs against a bare Quart route, next to what the layer does.

Why the hand-written routes live in the layer's app, on the layer's engine:
on SQLite the engine's ``begin`` listener (``service.db._engine._sqlite_begin``)
emits ``BEGIN`` (DEFERRED) only when the current unit of work is read-only, and
``BEGIN IMMEDIATE`` otherwise, including when there is no unit of work at all.
Every request of this app, ``/hand/...`` included, goes through ``Database``'s
before_request hook, which opens a unit of work that is read-only for GET. So a
hand-written GET begins DEFERRED and a hand-written POST begins IMMEDIATE,
exactly like the layer's: both sides send the same SQL (checked with the
engine's echo: BEGIN / SELECT / COMMIT and BEGIN IMMEDIATE / INSERT / COMMIT).
The hand-written handlers never touch the scoped ``session``, so the layer's
end-of-request hooks find no session and emit no SQL. What the hand side
therefore still pays is the hooks' fixed bookkeeping (a ``UnitOfWork`` object,
a context variable set and reset, look-ups through Quart's context proxies);
that part of the layer's cost is measured on its own by ``GET /nodb`` against
``plain_app()``.

The rejected alternative, a hand-written app without ``Database`` on an engine
from ``make_engine()``, would begin even its reads IMMEDIATE (no unit of work,
so not read-only): its reads would queue on SQLite's write lock, which would
flatter the layer.

``plain_app()`` is a bare Quart app with ``GET /nodb`` only: the baseline for a
request that uses no database.
"""

from __future__ import annotations

from quart import Quart, abort
from quart.typing import ResponseReturnValue
from sqlalchemy import String
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from service.config import Settings
from service.db import Model
from service.db.quart import Database

__all__ = ["TABLE", "BenchItem", "layer_app", "plain_app", "service_app"]

TABLE = "bench_items"


class BenchItem(Model):
    __tablename__ = TABLE

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))


def _item(item: BenchItem) -> dict[str, object]:
    return {"id": item.id, "name": item.name}


class _HandFactory:
    """The hand-written routes' ``async_sessionmaker``, made when serving starts."""

    def __init__(self, database: Database) -> None:
        self._database = database
        self._factory: async_sessionmaker[AsyncSession] | None = None

    async def start(self) -> None:
        # Registered after the Database, so its before_serving hook has already
        # made the engine: the very engine the layer's sessions use.
        self._factory = async_sessionmaker(self._database.engine, expire_on_commit=False)

    def __call__(self) -> AsyncSession:
        if self._factory is None:
            raise RuntimeError("the app is not serving yet")
        return self._factory()


def _add_routes(app: Quart, database: Database) -> Quart:
    factory = _HandFactory(database)
    app.before_serving(factory.start)

    @app.get("/layer/items/<int:item_id>")
    async def layer_read(item_id: int) -> ResponseReturnValue:
        item = await BenchItem.get(item_id)
        if item is None:
            abort(404)
        return _item(item)

    @app.post("/layer/items")
    async def layer_write() -> ResponseReturnValue:
        item = await BenchItem(name="x").save()
        return _item(item), 201

    @app.get("/hand/items/<int:item_id>")
    async def hand_read(item_id: int) -> ResponseReturnValue:
        async with factory() as s, s.begin():
            item = await s.get(BenchItem, item_id)
        if item is None:
            abort(404)
        return _item(item)

    @app.post("/hand/items")
    async def hand_write() -> ResponseReturnValue:
        async with factory() as s, s.begin():
            item = BenchItem(name="x")
            s.add(item)
            await s.flush()  # as save() does: the INSERT runs here, the COMMIT at block end
        return _item(item), 201

    @app.get("/nodb")
    async def nodb() -> ResponseReturnValue:
        return {"ok": True}

    return app


def layer_app() -> Quart:
    """Quart + ``Database`` (the layer under test) + the bench routes."""
    app = Quart(__name__)
    app.config["DATABASE_URL"] = Settings().database_url
    return _add_routes(app, Database(app))


def service_app() -> Quart:
    """The service's own ``create_app()`` + the bench routes."""
    from service.app import create_app, db  # here: importing service.app builds its app

    return _add_routes(create_app(), db)


def plain_app() -> Quart:
    """A bare Quart app: no ``Database``, one route."""
    app = Quart(__name__)

    @app.get("/nodb")
    async def plain_nodb() -> ResponseReturnValue:
        return {"ok": True}

    return app
