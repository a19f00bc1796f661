"""The plugin's fixtures, registered by ``service.testing`` once it is configured."""

from __future__ import annotations

import asyncio
import importlib
import os
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from alembic.config import Config
from quart import Quart
from quart.typing import TestClientProtocol
from sqlalchemy import MetaData, Table
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.schema import sort_tables

from alembic import command
from service.db import make_engine
from service.db.testing import (
    capture_on_commit,
    rolled_back,
    test_database,
)
from service.testing._client import raise_propagated_errors
from service.testing._support import COMMITTING, CaptureOnCommit, Cli, Queries, TestDatabase

__all__ = ["CaptureOnCommit", "Cli", "Queries", "TestDatabase"]


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def service_database_url(pytestconfig: pytest.Config) -> AsyncIterator[str]:
    """The URL of the tests' own database, made for the session and dropped after it.

    Next to ``TEST_DATABASE_URL``'s database (``test_<name>`` on its server), or a
    SQLite file in a temporary directory; ``TEST_DATABASE_URL``'s own database is
    never touched.
    """
    base = os.environ.get("TEST_DATABASE_URL") or "sqlite+aiosqlite:///test.db"
    try:
        async with test_database(base) as url:
            yield url
    except (OSError, ConnectionError) as error:
        _unreachable(base, error)


@pytest.fixture(scope="session")
def service_test_tables() -> Sequence[Table]:
    """Tables of the tests' own, created after the schema. Override it to add some."""
    return ()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def service_database(
    pytestconfig: pytest.Config, service_database_url: str, service_test_tables: Sequence[Table]
) -> AsyncIterator[TestDatabase]:
    """The schema, built once for the session in the tests' own database."""
    engine = make_engine(service_database_url)
    try:
        metadata = pytestconfig.getini("service_metadata")
        if metadata:
            async with engine.begin() as connection:
                await connection.run_sync(_load_metadata(metadata).create_all)
        else:
            alembic_ini = Path(pytestconfig.rootpath, pytestconfig.getini("service_alembic_config"))
            await asyncio.to_thread(_migrate, alembic_ini, service_database_url)
        async with engine.begin() as connection:
            for table in sort_tables(service_test_tables):
                await connection.run_sync(table.create)
            tables = await connection.run_sync(_reflect)
        yield TestDatabase(service_database_url, engine, tables)
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def service_engine(service_database: TestDatabase) -> AsyncEngine:
    """The tests' own engine on the test database, for reading what was written."""
    return service_database.engine


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def service_app(
    pytestconfig: pytest.Config, service_database: TestDatabase
) -> AsyncIterator[Quart]:
    """The app in testing mode on the test database, serving until the session ends."""
    factory = _load(pytestconfig.getini("service_app_factory"))
    # Jobs run at once after the commit, in the committing task: they join the test's
    # transaction like everything else, and are done when the request returns.
    # Rate limits off: a suite registers many users from one address. A test of the limits
    # makes an app of its own with them on.
    config = {
        "DATABASE_URL": service_database.url,
        "TESTING": True,
        "JOBS_BACKEND": "eager",
        "RATE_LIMIT_ENABLED": False,
    }
    app = factory(config)
    raise_propagated_errors(app)
    async with app.test_app():
        yield app


@pytest.fixture
def service_client(service_app: Quart) -> TestClientProtocol:
    return service_app.test_client()


@pytest_asyncio.fixture(autouse=True, loop_scope="session")
async def service_connection(
    request: pytest.FixtureRequest, service_database: TestDatabase, service_app: Quart
) -> AsyncIterator[AsyncConnection | None]:
    """The test's outer transaction, joined by every session and rolled back at the end.

    ``None`` in a ``service_committing`` test, whose tables are emptied afterwards.
    """
    if request.node.get_closest_marker(COMMITTING):
        try:
            yield None
        finally:
            await _background_tasks(service_app)
            async with service_database.engine.begin() as connection:
                for table in reversed(service_database.tables):
                    await connection.execute(table.delete())
        return
    async with rolled_back(service_database.engine) as outer:
        try:
            yield outer
        finally:
            await _background_tasks(service_app)


async def _background_tasks(app: Quart) -> None:
    """Let the test's background tasks finish, as serving lets them before the test ends."""
    while app.background_tasks:
        await asyncio.gather(*app.background_tasks, return_exceptions=True)


@pytest.fixture
def service_cli(
    pytestconfig: pytest.Config, service_app: Quart, service_database: TestDatabase
) -> Cli:
    """``await service_cli.invoke("add-note", "hello")``: a CLI command, in-process."""
    group = pytestconfig.getini("service_cli")
    return Cli(service_app, _load_object(group) if group else None, service_database.url)


@pytest.fixture
def service_queries() -> Queries:
    return Queries()


@pytest.fixture
def service_on_commit() -> CaptureOnCommit:
    """``capture_on_commit``: ``with service_on_commit(execute=False) as callbacks: ...``."""
    return capture_on_commit


_NO_SCHEMA = (
    "service.testing: no schema for the test database. Set `service_metadata = "
    "module:metadata` (the MetaData whose tables `create_all` makes, such as "
    "`myapp.models:Model.metadata`) or point `service_alembic_config` at your alembic.ini "
    "(looked for at {alembic_ini})."
)


def _migrate(alembic_ini: Path, url: str) -> None:
    if not alembic_ini.is_file():
        raise pytest.UsageError(_NO_SCHEMA.format(alembic_ini=alembic_ini))
    # Whichever way the project's env.py reads its URL, it reads the test database's.
    config = Config(alembic_ini)
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["database_url"] = url
    config.attributes["configure_logger"] = False
    previous = os.environ.get("DATABASE_URL")
    os.environ["DATABASE_URL"] = url
    try:
        command.upgrade(config, "head")
    finally:
        if previous is None:
            del os.environ["DATABASE_URL"]
        else:
            os.environ["DATABASE_URL"] = previous


def _load_object(path: str) -> Any:
    """``module:attribute.attribute``, imported."""
    module, _, name = path.partition(":")
    found: Any = importlib.import_module(module)
    for part in name.split("."):
        found = getattr(found, part)
    return found


def _load_metadata(path: str) -> MetaData:
    found = _load_object(path)
    if not isinstance(found, MetaData):
        raise pytest.UsageError(
            f"service_metadata: {path} is a {type(found).__name__}, not a MetaData"
        )
    return found


def _reflected(connection: Any) -> MetaData:
    metadata = MetaData()
    metadata.reflect(connection)
    return metadata


def _reflect(connection: Any) -> list[Table]:
    return [
        table for table in _reflected(connection).sorted_tables if table.name != "alembic_version"
    ]


def _load(path: str) -> Callable[[Mapping[str, Any]], Quart]:
    module, _, name = path.partition(":")
    factory: Callable[[Mapping[str, Any]], Quart] = getattr(importlib.import_module(module), name)
    return factory


def _unreachable(url: str, error: Exception) -> None:
    where = make_url(url).render_as_string(hide_password=True)
    message = f"the test database {where} is unreachable: {error}"
    if os.environ.get("CI") == "true":
        pytest.exit(f"{message} (CI=true: a missing database fails the run)", returncode=1)
    pytest.skip(message)
