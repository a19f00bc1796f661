"""A request whose database cannot be reached answers a quick JSON 503, wherever it failed."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from typing import Any

import asyncpg
import pytest
from quart import Quart
from sqlalchemy import make_url
from sqlalchemy.exc import DBAPIError

from service.db import _sqlite as sqlite_layer
from service.db.quart import Database
from service.errors import register_error_handlers
from tests.db.app import Probe, make_layer_app, routes
from tests.db.conftest import ReadNames, Serve
from tests.db.silent import silent_server

REFUSED = "postgresql+asyncpg://postgres@127.0.0.1:1/nowhere"


def _error(body: Any) -> dict[str, str]:
    error: dict[str, str] = body["error"]
    return error


@pytest.mark.service_committing  # no outer transaction: the app must reach its own database
@pytest.mark.parametrize("propagate", [False, True])
async def test_a_refused_connection_at_the_first_query_answers_503(
    serve: Serve, propagate: bool
) -> None:
    client = await serve(
        make_layer_app({"DATABASE_URL": REFUSED, "PROPAGATE_EXCEPTIONS": propagate})
    )

    for method, path in [("GET", "/widgets"), ("POST", "/widgets")]:
        response = await client.open(path, method=method, json={"name": "never"})
        assert response.status_code == 503, path
        assert response.content_type == "application/json"
        assert _error(await response.get_json())["code"] == "service_unavailable"


@pytest.mark.service_committing
async def test_a_database_that_does_not_answer_gives_a_503_after_the_connect_timeout(
    serve: Serve,
) -> None:
    async with silent_server() as port:
        url = f"postgresql+asyncpg://postgres@127.0.0.1:{port}/hung"
        client = await serve(make_layer_app({"DATABASE_URL": url, "DATABASE_CONNECT_TIMEOUT": 0.3}))

        started = time.monotonic()
        response = await client.get("/widgets")
        elapsed = time.monotonic() - started

    assert response.status_code == 503
    assert _error(await response.get_json())["code"] == "service_unavailable"
    assert elapsed < 3


@pytest.mark.service_committing
async def test_no_pooled_connection_in_time_answers_503_and_the_holder_still_commits(
    service_database_url: str, serve: Serve, fresh_probe: Probe, stored_names: ReadNames
) -> None:
    app = Quart(__name__)
    app.config.update(DATABASE_URL=service_database_url, DATABASE_POOL_TIMEOUT=0.2)
    Database(app, pool_size=1, max_overflow=0)
    register_error_handlers(app)
    app.register_blueprint(routes)
    client = await serve(app)

    holder = asyncio.create_task(client.post("/widgets/read-then-write", json={"name": "held"}))
    await asyncio.wait_for(fresh_probe.started.wait(), 5)
    try:
        waiting = await client.get("/widgets")
    finally:
        fresh_probe.proceed.set()

    assert waiting.status_code == 503
    assert _error(await waiting.get_json())["code"] == "service_unavailable"
    assert (await holder).status_code == 201
    assert await stored_names() == ["held"]


@pytest.mark.service_committing
@pytest.mark.parametrize("wrapped", [False, True])
@pytest.mark.parametrize(
    "error",
    [
        asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
        asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator"),
    ],
)
async def test_a_drivers_own_connection_error_answers_503(
    service_database_url: str, serve: Serve, error: Exception, wrapped: bool
) -> None:
    # asyncpg raises these while connecting to a server that starts or stops: as they are,
    # or wrapped by SQLAlchemy in a plain DBAPIError that says nothing of a connection.
    app = make_layer_app({"DATABASE_URL": service_database_url})

    @app.get("/connecting")
    async def connecting() -> dict[str, str]:
        if wrapped:
            raise DBAPIError("SELECT 1", None, error) from error
        raise error

    response = await (await serve(app)).get("/connecting")

    assert response.status_code == 503
    assert _error(await response.get_json())["code"] == "service_unavailable"


@pytest.mark.service_committing
async def test_another_database_error_is_still_a_500(
    service_database_url: str, serve: Serve
) -> None:
    app = make_layer_app({"DATABASE_URL": service_database_url})

    @app.get("/refused")
    async def refused() -> dict[str, str]:
        error = asyncpg.exceptions.UniqueViolationError("duplicate key")
        raise DBAPIError("INSERT", None, error) from error

    response = await (await serve(app)).get("/refused")

    assert response.status_code == 500
    assert _error(await response.get_json())["code"] == "internal_server_error"


@pytest.mark.service_committing  # another process's lock on the real file
async def test_the_write_lock_not_obtained_in_time_is_a_503_and_writes_nothing(
    service_database_url: str,
    serve: Serve,
    stored_names: ReadNames,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The one SQLite OperationalError that is an outage: another process holds the write
    # lock past the busy timeout (shortened here from 30 s).
    if not service_database_url.startswith("sqlite"):
        pytest.skip("SQLite's write lock (PostgreSQL has row locks instead)")
    monkeypatch.setattr(sqlite_layer, "BUSY_TIMEOUT", 0.3)
    client = await serve(make_layer_app({"DATABASE_URL": service_database_url}))
    other_process = sqlite3.connect(make_url(service_database_url).database or "")
    other_process.execute("BEGIN IMMEDIATE")
    try:
        response = await client.post("/widgets", json={"name": "never"})
    finally:
        other_process.rollback()
        other_process.close()

    assert response.status_code == 503
    assert await stored_names() == []
