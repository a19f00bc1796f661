from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack

import pytest
from quart import Quart
from quart.typing import TestClientProtocol as Client
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.testing import raise_propagated_errors
from tests.databases import plain_engine
from tests.db.app import Probe, make_layer_app, probe
from tests.db.models import Widget

ReadNames = Callable[[], Awaitable[list[str]]]
Serve = Callable[[Quart], Awaitable[Client]]


@pytest.fixture(scope="session")
async def reader(
    service_database_url: str, service_engine: AsyncEngine
) -> AsyncIterator[AsyncEngine]:
    """A plain engine, none of the layer's doing, to read what was really committed."""
    reader = plain_engine(service_database_url)
    yield reader
    await reader.dispose()


@pytest.fixture
def stored_names(service_connection: AsyncConnection | None, reader: AsyncEngine) -> ReadNames:
    """The widget names in the database, as a connection other than the session sees them.

    In a rolled-back test that is the test's outer connection (the requests'
    savepoints live in its transaction); in a committing test, a fresh
    connection that sees committed rows only.
    """

    async def read() -> list[str]:
        query = select(Widget.name).order_by(Widget.name)
        if service_connection is not None:
            return list((await service_connection.scalars(query)).all())
        async with reader.connect() as fresh:
            return list((await fresh.scalars(query)).all())

    return read


@pytest.fixture(scope="session")
async def layer_app(service_database_url: str) -> AsyncIterator[Quart]:
    """The layer's own test app (``tests.db.app``), in testing mode, serving for the session."""
    app = make_layer_app({"DATABASE_URL": service_database_url, "TESTING": True})
    raise_propagated_errors(app)
    async with app.test_app():
        yield app


@pytest.fixture
def layer_client(layer_app: Quart) -> Client:
    return layer_app.test_client()


@pytest.fixture
def layer_errors_as_responses(layer_app: Quart, monkeypatch: pytest.MonkeyPatch) -> None:
    """As in production: an unhandled exception answers a 500 instead of propagating."""
    monkeypatch.setitem(layer_app.config, "PROPAGATE_EXCEPTIONS", False)


@pytest.fixture(autouse=True)
def fresh_probe() -> Probe:
    probe.committed.clear()
    probe.started.clear()
    probe.proceed.clear()
    return probe


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start an app of the test's own making; it stops when the test ends."""
    async with AsyncExitStack() as stack:

        async def start(app: Quart) -> Client:
            test_app = app.test_app()
            await test_app.startup()
            stack.push_async_callback(test_app.shutdown)
            return app.test_client()

        yield start
