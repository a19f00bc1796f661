"""Fixtures of the newcomer's suite: their own app, served, and a reader of what is stored."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack

import pytest
from quart.typing import TestClientProtocol as Client
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.testing import raise_propagated_errors
from tests.databases import plain_engine as make_plain_engine
from tests.newcomer.app import create_app
from tests.newcomer.models import Author

Serve = Callable[..., Awaitable[Client]]
StoredAuthors = Callable[[], Awaitable[list[str]]]


@pytest.fixture
async def newcomer(service_database_url: str) -> AsyncIterator[Serve]:
    """``await newcomer(testing=...)``: the newcomer's app, serving, and a client of it."""
    async with AsyncExitStack() as stack:

        async def serve(*, testing: bool = False) -> Client:
            app = create_app({"DATABASE_URL": service_database_url, "TESTING": testing})
            raise_propagated_errors(app)  # as the plugin does for its own app
            test_app = app.test_app()
            await test_app.startup()
            stack.push_async_callback(test_app.shutdown)
            return app.test_client()

        yield serve


@pytest.fixture(scope="session")
async def plain_engine(service_database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine of SQLAlchemy's own, none of the layer's doing."""
    engine = make_plain_engine(service_database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
def stored_authors(
    service_connection: AsyncConnection | None, plain_engine: AsyncEngine
) -> StoredAuthors:
    """The authors' names as stored: through the test's connection, or a fresh one."""

    async def read() -> list[str]:
        query = select(Author.name).order_by(Author.name)
        if service_connection is not None:
            return list((await service_connection.scalars(query)).all())
        async with plain_engine.connect() as fresh:
            return list((await fresh.scalars(query)).all())

    return read
