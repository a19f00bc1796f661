"""A book club's Quart app, on the layer's public names only (``service.db``, ``service.jobs``).

It is the outsider's app the layer is proved on: every way into a Quart app
(HTTP handlers, a websocket, a streamed response, background tasks, a
``before_serving`` hook, a CLI command, a job) and the promise's edges
(savepoints, caught errors, conflicts, another database).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import click
from quart import Quart, Response, abort, request, websocket
from sqlalchemy import event, select
from sqlalchemy import update as core_update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db import make_engine, session, unit_of_work
from service.db.quart import Database
from service.jobs import Jobs, enqueue, job
from tests.bookclub.models import AuditEntry, Member, Tag, Volume

Answer = tuple[dict[str, Any], int]


@unit_of_work()
async def tag(name: str, note: str = "") -> None:
    """A unit of work of its own: for background tasks."""
    await Tag.create(name=name, note=note)


@unit_of_work()
async def tag_if_member(name: str) -> None:
    """A background task: it sees what its request committed, or that it rolled back."""
    member = await Member.query.filter_by(name=name).first()
    await Tag.create(name=f"{'member' if member else 'missing'}:{name}")


@job()
async def welcome(member_id: int) -> None:
    member = await Member.get(member_id)
    assert member is not None  # the job exists only if the member was committed
    await Tag.create(name=f"welcomed:{member.name}")


async def _names() -> list[str]:
    return [member.name async for member in Member.query.order_by(Member.name).stream(batch=2)]


def create_app(config: Mapping[str, Any]) -> Quart:
    app = Quart(__name__)
    app.config.update(config)
    audit: dict[str, AsyncEngine] = {}

    @app.before_serving  # registered before Database(app): it still has the database
    @unit_of_work()
    async def seed() -> None:
        await Tag.get_or_create(name="welcome")

    db = Database(app)
    Jobs(db, app)

    @app.before_serving
    async def open_audit() -> None:
        if app.config.get("AUDIT_DATABASE_URL"):
            audit["engine"] = make_engine(app.config["AUDIT_DATABASE_URL"])

    pool: dict[str, float] = {"checked_in_at": 0.0}

    @app.before_serving
    async def watch_the_pool() -> None:
        def checked_in(*args: object) -> None:
            pool["checked_in_at"] = time.time()

        event.listen(db.engine.sync_engine, "checkin", checked_in)

    @app.get("/pool")
    async def pool_status() -> dict[str, Any]:
        """The pool as its events saw it: for the streaming test (uses no connection)."""
        checked_out = db.engine.pool.checkedout()  # type: ignore[attr-defined]
        return {"checked_out": checked_out, "checked_in_at": pool["checked_in_at"]}

    @app.after_serving
    async def close_audit() -> None:
        if "engine" in audit:
            await audit.pop("engine").dispose()

    # Plain handlers ---------------------------------------------------------------------------

    @app.post("/members")
    async def add_member() -> Answer:
        body = await request.get_json()
        member = await Member.create(name=body["name"])
        return {"id": member.id, "name": member.name}, 201

    @app.get("/members")
    async def list_members() -> dict[str, Any]:
        return {"names": await _names()}

    @app.get("/members/streamed-read")
    async def streamed_read() -> dict[str, Any]:
        """``session.stream_scalars`` in a GET: a server-side cursor on PostgreSQL."""
        result = await session.stream_scalars(select(Member).order_by(Member.name))
        return {"names": [member.name async for member in result]}

    @app.get("/members/write-in-get")
    async def write_in_get() -> dict[str, Any]:
        await Member.create(name="written by a GET")  # refused: a GET's unit is read-only
        return {}

    # The promise's edges ----------------------------------------------------------------------

    @app.post("/claims/savepoint")
    async def claim_in_savepoint() -> Answer:
        body = await request.get_json()
        for name in body["names"]:
            await Member.create(name=name)
        try:
            async with unit_of_work():  # a savepoint: it contains its own failure
                await Member.create(name="inside the savepoint")
                await Member.create(name=body["duplicate"])
        except IntegrityError:
            pass
        return {"stored": body["names"]}, 201

    @app.post("/claims/caught")
    async def claim_caught() -> Answer:
        body = await request.get_json()
        for name in body["names"]:
            await Member.create(name=name)
        try:
            await Member.create(name=body["duplicate"])  # no savepoint: the unit rolls back
        except IntegrityError:
            pass
        return {"stored": body["names"]}, 201  # answered 409 instead: nothing was saved

    @app.post("/claims/begin-nested")
    async def claim_in_begin_nested() -> Answer:
        body = await request.get_json()
        for name in body["names"]:
            await Member.create(name=name)
        try:
            async with session.begin_nested():
                await Member.create(name=body["duplicate"])
        except IntegrityError:
            pass
        return {"stored": body["names"]}, 201

    @app.post("/claims/caught-inside-savepoint")
    async def claim_caught_inside() -> Answer:
        body = await request.get_json()
        await Member.create(name=body["names"][0])
        async with unit_of_work():
            try:
                await Member.create(name=body["duplicate"])
            except IntegrityError:
                pass  # caught inside the block: the block raises when it ends
        return {}, 201

    @app.post("/members/get-or-create")
    async def get_or_create_member() -> Answer:
        body = await request.get_json()
        if body.get("also"):
            await Member.create(name=body["also"])  # an earlier write, which must stay
        member, made = await Member.get_or_create(name=body["name"])
        return {"id": member.id, "made": made}, 201 if made else 200

    @app.patch("/volumes/<int:volume_id>")
    async def retitle(volume_id: int) -> dict[str, Any]:
        body = await request.get_json()
        volume = await Volume.query.get_or_404(volume_id)
        await asyncio.sleep(body.get("pause", 0))  # another request may change it meanwhile
        await volume.update(title=body["title"])
        return {"title": volume.title, "version": volume.version}

    @app.patch("/volumes/<int:volume_id>/changed-under")
    async def retitle_a_changed_volume(volume_id: int) -> dict[str, Any]:
        volume = await Volume.query.get_or_404(volume_id)
        # As another request would: a new version, which this one's loaded copy is not.
        changed = core_update(Volume).where(Volume.id == volume_id)
        await session.execute(
            changed.values(version=Volume.version + 1).execution_options(synchronize_session=False)
        )
        await volume.update(title="too late")  # StaleDataError: a conflict, 409
        return {}

    @app.post("/audit")
    async def audited() -> Answer:
        body = await request.get_json()
        async with unit_of_work(bind=audit["engine"]):  # a unit of its own on that database
            session.add(AuditEntry(what=body["what"]))
        if body.get("fail"):
            abort(422)  # the request rolls back; the audit entry is already committed
        await Member.create(name=body["what"])
        return {}, 201

    # Background tasks and jobs ----------------------------------------------------------------

    @app.post("/members/background")
    async def add_member_then_tag() -> Answer:
        body = await request.get_json()
        await Member.create(name=body["name"])
        app.add_background_task(tag_if_member, body["name"])
        if body.get("fail"):
            abort(422)
        return {}, 201

    children: list[asyncio.Task[None]] = []  # kept, for the tests to await
    app.extensions["club_children"] = children

    @app.post("/members/fire-and-forget")
    async def add_member_and_start_a_task() -> Answer:
        """A child task the handler does not wait for, with a unit of work of its own."""
        body = await request.get_json()
        await Member.create(name=body["name"])
        children.append(asyncio.create_task(tag(f"child:{body['name']}")))
        return {}, 201

    @app.post("/members/welcome")
    async def add_member_and_welcome() -> Answer:
        body = await request.get_json()
        member = await Member.create(name=body["name"])
        enqueue(welcome, member.id)
        if body.get("fail"):
            abort(422)
        return {"id": member.id}, 202

    # Queries ----------------------------------------------------------------------------------

    @app.get("/volumes")
    async def volumes_page() -> dict[str, Any]:
        page = await Volume.query.paginate(
            int(request.args.get("page", 1)), int(request.args.get("per_page", 20))
        )
        return {
            "titles": [volume.title for volume in page.items],
            "total": page.total,
            "pages": page.pages,
            "has_next": page.has_next,
        }

    @app.get("/volumes/after")
    async def volumes_after() -> dict[str, Any]:
        after = request.args.get("after")
        page = await Volume.query.keyset(after=int(after) if after else None, limit=2)
        return {"titles": [volume.title for volume in page.items], "after": page.after}

    @app.post("/volumes/shelve")
    async def shelve() -> dict[str, Any]:
        body = await request.get_json()
        moved = await Volume.query.filter(Volume.shelf == body["from"]).update(shelf=body["to"])
        return {"moved": moved}

    @app.delete("/tags")
    async def delete_tags() -> dict[str, Any]:
        return {"deleted": await Tag.query.filter_by(note=request.args["note"]).delete()}

    # A streamed response and a websocket ------------------------------------------------------

    @app.get("/members/export")
    async def export() -> Response:
        async def lines() -> AsyncIterator[bytes]:
            # The request's unit of work has ended: the body is read in a unit of its own.
            async with unit_of_work(readonly=True):
                async for member in Member.query.order_by(Member.id).stream(batch=500):
                    yield (json.dumps({"id": member.id, "name": member.name}) + "\n").encode()

        return Response(lines(), content_type="application/x-ndjson")

    @app.get("/members/export-without-unit")
    async def export_without_unit() -> Response:
        async def lines() -> AsyncIterator[bytes]:
            yield b"["
            for member in await Member.query.all():  # no unit of work here: refused
                yield member.name.encode()
            yield b"]"

        return Response(lines(), content_type="application/json")

    @app.websocket("/ws/members")
    async def members_socket() -> None:
        while True:
            message = await websocket.receive_json()
            try:
                async with unit_of_work():  # one per message, never around receive()
                    member = await Member.create(name=message["name"])
            except IntegrityError:
                await websocket.send_json({"error": "taken", "name": message["name"]})
                continue
            await websocket.send_json({"id": member.id})

    @app.websocket("/ws/without-unit")
    async def socket_without_unit() -> None:
        message = await websocket.receive_json()
        try:
            await Member.create(name=message["name"])
        except Exception as error:  # the layer's error, sent back to show what it says
            await websocket.send_json({"error": str(error)})

    # A CLI command ----------------------------------------------------------------------------

    @db.command("add-member")
    @click.argument("name")
    @click.option("--fail", is_flag=True)
    async def add_member_command(name: str, fail: bool) -> None:
        await Member.create(name=name)
        click.echo(f"added {name}")
        if fail:
            raise click.ClickException("asked to fail")

    return app
