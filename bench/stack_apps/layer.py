"""The layer: a plain Quart app with ``Database(app)``, ``await Item.get(i)`` and
``await Item(name=...).save()`` in the request's unit of work, on Hypercorn.

Served as ``hypercorn bench.stack_apps.layer:app``. The unit of work commits when
the final status is below 400; a GET is a read-only unit (on PostgreSQL its
statements run in autocommit, on SQLite it begins DEFERRED), a POST begins
IMMEDIATE on SQLite, behind the layer's FIFO writer gate.
"""

from __future__ import annotations

import os

from quart import Quart, abort, request
from quart.typing import ResponseReturnValue
from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from bench.stack_apps import POOL_SIZE
from service.db import Model
from service.db.quart import Database

__all__ = ["Item", "app"]


class Item(Model):
    __tablename__ = "items"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))


app = Quart(__name__)
app.config.update(
    DATABASE_URL=os.environ["DATABASE_URL"],
    DATABASE_POOL_SIZE=POOL_SIZE,
    DATABASE_MAX_OVERFLOW=0,
)
Database(app)


@app.get("/items/<int:item_id>")
async def read(item_id: int) -> ResponseReturnValue:
    item = await Item.get(item_id)
    if item is None:
        abort(404)
    return {"id": item.id, "name": item.name}


@app.post("/items")
async def write() -> ResponseReturnValue:
    data = await request.get_json()
    item = await Item(name=data["name"]).save()
    return {"id": item.id, "name": item.name}, 201


@app.get("/nodb")
async def nodb() -> ResponseReturnValue:
    return {"ok": True}
