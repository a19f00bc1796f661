"""Hand-written: the same plain Quart app without the layer, and in each handler
``async with Session() as s, s.begin():`` on an ``async_sessionmaker``, on Hypercorn.

Served as ``hypercorn bench.stack_apps.hand:app``. The engine (``_sqlalchemy``) is
made when serving starts and disposed when it stops. A write's session is bound
to the engine with the ``sqlite_immediate`` option, so that on SQLite it begins
IMMEDIATE; a read's begins DEFERRED. On PostgreSQL both send BEGIN and COMMIT.
"""

from __future__ import annotations

import os

from quart import Quart, abort, request
from quart.typing import ResponseReturnValue
from sqlalchemy import String
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bench.stack_apps._sqlalchemy import IMMEDIATE, make_engine

__all__ = ["app"]


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))


class Sessions:
    """The app's engine and session factories, from serving's start to its end."""

    engine: AsyncEngine
    read: async_sessionmaker[AsyncSession]
    write: async_sessionmaker[AsyncSession]


sessions = Sessions()
app = Quart(__name__)


@app.before_serving
async def start() -> None:
    sessions.engine = make_engine(os.environ["DATABASE_URL"])
    sessions.read = async_sessionmaker(sessions.engine, expire_on_commit=False)
    writer = sessions.engine.execution_options(**IMMEDIATE)
    sessions.write = async_sessionmaker(writer, expire_on_commit=False)


@app.after_serving
async def stop() -> None:
    await sessions.engine.dispose()


@app.get("/items/<int:item_id>")
async def read(item_id: int) -> ResponseReturnValue:
    async with sessions.read() as s, s.begin():
        item = await s.get(Item, item_id)
    if item is None:
        abort(404)
    return {"id": item.id, "name": item.name}


@app.post("/items")
async def write() -> ResponseReturnValue:
    data = await request.get_json()
    async with sessions.write() as s, s.begin():
        item = Item(name=data["name"])
        s.add(item)
    return {"id": item.id, "name": item.name}, 201


@app.get("/nodb")
async def nodb() -> ResponseReturnValue:
    return {"ok": True}
