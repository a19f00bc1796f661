"""Nothing waits on the client while holding the database.

The request's body is received in full, bounded by ``MAX_CONTENT_LENGTH`` and
``BODY_TIMEOUT``, before anything in the request can touch the database, hooks
that run before the view (authentication) included. A route that must stream
its body opts out with ``@streaming_body``. The response is sent after the commit.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from quart import Blueprint, Quart, g, request
from quart.typing import TestClientProtocol as Client
from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db.quart import Database, streaming_body
from service.errors import register_error_handlers
from tests.databases import plain_engine
from tests.db.conftest import ReadNames, Serve
from tests.db.models import Widget

BODY = json.dumps({"name": "patient"}).encode()
HEADERS = {"Content-Type": "application/json", "Content-Length": str(len(BODY))}

pytestmark = pytest.mark.service_committing  # real connections: the pool is what is watched


def _hooked_app(url: str, **config: Any) -> Quart:
    """An app whose hooks use the database before the view, registered every which way."""
    app = Quart(__name__)
    app.config.update(DATABASE_URL=url, **config)

    @app.before_request
    async def counted_before_the_extension() -> None:
        g.before = await Widget.query.count()

    Database(app)
    register_error_handlers(app)

    def first_of_all() -> None:  # inserted ahead of every other hook, the layer's included
        g.first = True

    app.before_request_funcs[None].insert(0, first_of_all)
    authenticated = Blueprint("authenticated", __name__)

    @authenticated.before_request
    async def authenticate() -> None:  # what the ledger's authentication does
        g.seen = await Widget.query.filter_by(name="nobody").first()

    @authenticated.post("/hooked")
    async def hooked() -> tuple[dict[str, Any], int]:
        body = await request.get_json()
        await Widget.create(name=body["name"])
        return {"before": g.before}, 201

    first_chunk_saved = app.extensions["first_chunk_saved"] = asyncio.Event()

    @authenticated.post("/streamed")
    @streaming_body
    async def streamed() -> tuple[dict[str, Any], int]:
        chunks = 0
        async for chunk in request.body:
            if chunk:
                chunks += 1
                await Widget.create(name=f"chunk-{chunks}")  # before the body is complete
                first_chunk_saved.set()
        return {"chunks": chunks}, 201

    app.register_blueprint(authenticated)
    return app


@pytest.fixture
def checkouts() -> list[str]:
    return []


async def _watched(serve: Serve, app: Quart, checkouts: list[str]) -> Client:
    client = await serve(app)
    async with app.app_context():
        engine: AsyncEngine = app.extensions["service.db"].engine
    event.listen(engine.sync_engine, "checkout", lambda *_: checkouts.append("checkout"))
    return client


async def test_no_connection_is_checked_out_while_the_body_is_arriving(
    service_database_url: str, serve: Serve, checkouts: list[str], stored_names: ReadNames
) -> None:
    app = _hooked_app(service_database_url)
    client = await _watched(serve, app, checkouts)

    async with client.request("/hooked", method="POST", headers=HEADERS) as connection:
        await connection.send(BODY[:5])
        await asyncio.sleep(0.3)  # the hooks would have run by now, had they not waited
        assert checkouts == []
        await connection.send(BODY[5:])
        await connection.send_complete()
    response = await connection.as_response()

    assert response.status_code == 201
    assert checkouts  # the hooks and the view did use the database, once the body was in
    assert await stored_names() == ["patient"]


async def test_a_body_that_does_not_arrive_in_time_is_a_json_408_and_touches_nothing(
    service_database_url: str, serve: Serve, checkouts: list[str], stored_names: ReadNames
) -> None:
    app = _hooked_app(service_database_url, BODY_TIMEOUT=0.3)
    client = await _watched(serve, app, checkouts)

    async with client.request("/hooked", method="POST", headers=HEADERS) as connection:
        await connection.send(BODY[:5])  # and then nothing
    response = await connection.as_response()

    assert response.status_code == 408
    assert (await response.get_json())["error"]["code"] == "request_timeout"
    assert checkouts == []
    assert await stored_names() == []


async def test_a_body_over_the_limit_is_a_413_before_the_database_is_touched(
    service_database_url: str, serve: Serve, checkouts: list[str]
) -> None:
    app = _hooked_app(service_database_url, MAX_CONTENT_LENGTH=10)
    client = await _watched(serve, app, checkouts)

    async with client.request("/hooked", method="POST", headers=HEADERS) as connection:
        await connection.send(BODY)
        await connection.send_complete()
    response = await connection.as_response()

    assert response.status_code == 413
    assert checkouts == []


async def test_a_streaming_route_opts_out_and_may_use_the_database_as_the_body_arrives(
    service_database_url: str, serve: Serve, checkouts: list[str], stored_names: ReadNames
) -> None:
    app = _hooked_app(service_database_url)
    client = await _watched(serve, app, checkouts)

    async with client.request("/streamed", method="POST") as connection:
        await connection.send(b"first")
        # Up to 10 s: a first connection to a busy server takes a while. The second chunk goes
        # only once the first is saved, else the two may arrive as one.
        async with asyncio.timeout(10):
            await app.extensions["first_chunk_saved"].wait()
        assert checkouts  # the hooks ran, and the view wrote, with the body still open
        await connection.send(b"second")
        await connection.send_complete()
    response = await connection.as_response()

    assert (response.status_code, await response.get_json()) == (201, {"chunks": 2})
    assert await stored_names() == ["chunk-1", "chunk-2"]


@pytest.fixture
async def plain_reader(service_database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = plain_engine(service_database_url)
    yield engine
    await engine.dispose()


async def test_the_response_starts_only_after_the_commit(
    service_database_url: str, serve: Serve, plain_reader: AsyncEngine
) -> None:
    app = _hooked_app(service_database_url)
    seen_at_response_start: list[list[str]] = []
    inner = app.asgi_app

    async def watching(scope: Any, receive: Any, send: Any) -> None:
        async def watched_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                async with plain_reader.connect() as connection:
                    names = (await connection.scalars(select(Widget.name))).all()
                seen_at_response_start.append(list(names))
            await send(message)

        await inner(scope, receive, watched_send)

    app.asgi_app = watching  # type: ignore[method-assign]
    client = await serve(app)

    response = await client.post("/hooked", json={"name": "durable"})

    assert response.status_code == 201
    assert seen_at_response_start == [["durable"]]  # committed, as seen by another connection
