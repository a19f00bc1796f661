"""The suite runs against one database per process: ``TEST_DATABASE_URL``, else a SQLite file.

The schema is built once per session. Each test runs inside an outer transaction
that is rolled back at its end; the app's sessions join it with
``join_transaction_mode="create_savepoint"``, so handlers commit and roll back
as they would in production. Tests marked ``committing`` use real commits on the
app's own engine instead, and the tables are emptied after them.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from quart import Quart
from quart.typing import TestClientProtocol as Client
from sqlalchemy import delete
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.db import Model, make_engine
from service.db._session import join_sessions_to
from tests.db.app import make_test_app

pytest_plugins: list[str] = []


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        return url
    path: Path = tmp_path_factory.mktemp("db") / "test.db"
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture(scope="session")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """The test's own engine: builds the schema, and reads through connections of its own."""
    engine = make_engine(database_url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(Model.metadata.drop_all)
            await connection.run_sync(Model.metadata.create_all)
    except (OSError, ConnectionError) as error:
        await engine.dispose()
        where = make_url(database_url).render_as_string(hide_password=True)
        message = f"the test database {where} is unreachable: {error}"
        if os.environ.get("CI") == "true":
            pytest.exit(f"{message} (CI=true: a missing database fails the run)", returncode=1)
        pytest.skip(message)
    yield engine
    async with engine.begin() as connection:
        await connection.run_sync(Model.metadata.drop_all)
    await engine.dispose()


@pytest.fixture(scope="session")
async def app(database_url: str, engine: AsyncEngine) -> AsyncIterator[Quart]:
    """The service's app with the layer's test routes, serving (its lifespan has run)."""
    app = make_test_app({"DATABASE_URL": database_url})
    async with app.test_app():
        yield app


@pytest.fixture
def client(app: Quart) -> Client:
    return app.test_client()


@pytest.fixture(autouse=True)
async def connection(
    request: pytest.FixtureRequest, engine: AsyncEngine, app: Quart
) -> AsyncIterator[AsyncConnection | None]:
    """The test's outer transaction, which every session of the test joins."""
    if request.node.get_closest_marker("committing"):
        try:
            yield None
        finally:
            async with engine.begin() as cleanup:
                for table in reversed(Model.metadata.sorted_tables):
                    await cleanup.execute(delete(table))
        return
    async with engine.connect() as outer:
        transaction = await outer.begin()
        try:
            with join_sessions_to(outer):
                yield outer
        finally:
            await transaction.rollback()
