"""FastAPI + advanced-alchemy, as its FastAPI guide builds an app, in autocommit mode,
on Hypercorn.

Served as ``hypercorn bench.stack_apps.fastapi_aa:app``. A ``SQLAlchemyAsyncConfig``
with ``commit_mode="autocommit"`` (commit after a 2xx, else roll back, done by
advanced-alchemy) and ``expire_on_commit=False``, given to
``AdvancedAlchemy(config=..., app=app)``; the request's session injected with
``Depends(alchemy.provide_session())``; a ``SQLAlchemyAsyncRepositoryService``
for the model; pydantic models in and out. The engine is the hand-written
stack's (``_sqlalchemy``), passed as ``engine_instance``: the same pool and, on
SQLite, the same connection set-up and BEGIN. A write asks for its connection
with the ``sqlite_immediate`` option before its first statement, so that on
SQLite it begins IMMEDIATE. ``create(..., auto_refresh=False)``: its default
would read the new row back, one SELECT more than the other stacks send.
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator
from typing import Annotated

from advanced_alchemy.extensions.fastapi import (
    AdvancedAlchemy,
    AsyncSessionConfig,
    SQLAlchemyAsyncConfig,
    repository,
    service,
)
from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import String
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bench.stack_apps._sqlalchemy import IMMEDIATE, make_engine

__all__ = ["app"]


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))


class ItemIn(BaseModel):
    name: str = Field(max_length=100)


class ItemOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str


class ItemService(service.SQLAlchemyAsyncRepositoryService[Item]):
    class Repo(repository.SQLAlchemyAsyncRepository[Item]):
        model_type = Item

    repository_type = Repo


alchemy_config = SQLAlchemyAsyncConfig(
    engine_instance=make_engine(os.environ["DATABASE_URL"]),
    session_config=AsyncSessionConfig(expire_on_commit=False),
    commit_mode="autocommit",
)
app = FastAPI()
alchemy = AdvancedAlchemy(config=alchemy_config, app=app)

DatabaseSession = Annotated[AsyncSession, Depends(alchemy.provide_session())]


async def provide_items(db_session: DatabaseSession) -> AsyncGenerator[ItemService, None]:
    async with ItemService.new(session=db_session) as items:
        yield items


Items = Annotated[ItemService, Depends(provide_items)]


@app.get("/items/{item_id}")
async def read(item_id: int, items: Items) -> ItemOut:
    item = await items.get_one_or_none(id=item_id)
    if item is None:
        raise HTTPException(404, "No such item.")
    return items.to_schema(item, schema_type=ItemOut)


@app.post("/items", status_code=201)
async def write(data: ItemIn, items: Items, db_session: DatabaseSession) -> ItemOut:
    await db_session.connection(execution_options=IMMEDIATE)
    item = await items.create(Item(name=data.name), auto_refresh=False)
    return items.to_schema(item, schema_type=ItemOut)


@app.get("/nodb")
async def nodb() -> dict[str, bool]:
    return {"ok": True}
