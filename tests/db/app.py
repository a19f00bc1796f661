"""The layer's own test app: a plain Quart app with ``Database``, and routes that exercise the
layer from inside real requests. Nothing of the ledger."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from quart import Blueprint, Quart, abort, redirect, request
from quart.typing import ResponseReturnValue
from sqlalchemy import text
from werkzeug.exceptions import HTTPException

from service.db import on_commit, session, unit_of_work
from service.db.quart import Database
from tests.db.models import Part, Widget


@dataclass
class Probe:
    """What the test routes report back to the tests, and the gates they wait on."""

    committed: list[str] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    proceed: asyncio.Event = field(default_factory=asyncio.Event)


probe = Probe()
routes = Blueprint("layer", __name__)
db = Database()


async def _name() -> str:
    body = await request.get_json()
    name: str = body["name"]
    return name


@routes.post("/widgets")
async def create_widget() -> ResponseReturnValue:
    """Creates a widget, then answers with the status the test asks for."""
    widget = await Widget.create(name=await _name())
    status = request.args.get("status", 201, type=int)
    if 300 <= status < 400:
        return redirect(f"/widgets/{widget.id}", status)
    return {"id": widget.id, "name": widget.name}, status


@routes.get("/widgets")
async def list_widgets() -> ResponseReturnValue:
    widgets = await Widget.query.order_by(Widget.name).all()
    return {"names": [widget.name for widget in widgets]}


@routes.post("/widgets/abort")
async def create_then_abort() -> ResponseReturnValue:
    await Widget.create(name=await _name())
    abort(409)


@routes.post("/widgets/raise")
async def create_then_raise() -> ResponseReturnValue:
    await Widget.create(name=await _name())
    raise RuntimeError("the handler failed after writing")


@routes.post("/widgets/wait")
async def create_then_wait() -> ResponseReturnValue:
    """Writes, then holds its transaction open until the test lets it go."""
    await Widget.create(name=await _name())
    probe.started.set()
    await probe.proceed.wait()
    return {"ok": True}, 201


@routes.post("/parts")
async def create_dangling_part() -> ResponseReturnValue:
    """A widget and a part that refers to no widget: the flush passes, the COMMIT fails."""
    await Widget.create(name=await _name())
    await Part.create(widget_id=999_999)
    return {"ok": True}, 201


@routes.post("/widgets/cut")
async def create_then_lose_connection() -> ResponseReturnValue:
    """PostgreSQL only: the server drops this request's connection before it ends."""
    await Widget.create(name=await _name())
    pid = await session.scalar(text("SELECT pg_backend_pid()"))
    async with db.engine.connect() as other:
        await other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    return {"ok": True}, request.args.get("status", 201, type=int)


@routes.post("/commit-guard")
async def write_what_a_commit_trigger_refuses() -> ResponseReturnValue:
    """PostgreSQL only: a deferred trigger on test_commit_guard raises at COMMIT."""
    await session.execute(text("INSERT INTO test_commit_guard (id) VALUES (1)"))
    await Widget.create(name=await _name())
    return {"ok": True}, 201


@routes.post("/widgets/read-then-write")
async def read_then_write() -> ResponseReturnValue:
    """Reads, holds the transaction open until the test lets it go, then writes."""
    seen = await Widget.query.count()
    probe.started.set()
    await probe.proceed.wait()
    await Widget.create(name=await _name(), size=seen)
    return {"ok": True}, 201


@routes.post("/widgets/gather")
async def create_in_child_tasks() -> ResponseReturnValue:
    """Wrong: model calls in child tasks have no unit of work of their own."""
    await asyncio.gather(Widget.create(name="child-1"), Widget.create(name="child-2"))
    return {"ok": True}, 201


@unit_of_work()
async def _create_in_own_unit(name: str) -> None:
    await Widget.create(name=name)


@routes.post("/widgets/gather-units")
async def create_in_child_units() -> ResponseReturnValue:
    """Right: each child coroutine is a unit of work of its own."""
    await asyncio.gather(_create_in_own_unit("unit-1"), _create_in_own_unit("unit-2"))
    return {"ok": True}, 201


@routes.post("/on-commit")
async def register_on_commit() -> ResponseReturnValue:
    name = await _name()
    await Widget.create(name=name)
    on_commit(lambda: probe.committed.append(name))
    return {"ok": True}, request.args.get("status", 201, type=int)


@routes.get("/nodb")
async def no_database() -> ResponseReturnValue:
    return {"ok": True}


async def _as_json(error: HTTPException) -> ResponseReturnValue:
    """The app's own rendering of HTTP errors, which the layer's answers go through."""
    code = (error.name or "error").lower().replace(" ", "_")
    return {"error": {"code": code, "message": error.description}}, error.code or 500


def make_layer_app(config: Mapping[str, Any]) -> Quart:
    """A plain app with the layer, the routes above, and JSON error pages of its own."""
    app = Quart(__name__)
    app.config.update(config)
    db.init_app(app)
    app.register_error_handler(HTTPException, _as_json)
    app.register_blueprint(routes)
    return app
