"""The plugin's fixtures, registered by ``service.testing`` once it is configured."""

from __future__ import annotations

import asyncio
import importlib
import os
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from alembic.config import Config
from click.testing import CliRunner, Result
from quart import Quart
from quart.typing import TestClientProtocol
from sqlalchemy import MetaData, Table
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.schema import sort_tables

from alembic import command
from service.cli import main, running_coroutines_with
from service.db import make_engine
from service.db.testing import (
    CapturedCallbacks,
    assert_max_queries,
    capture_on_commit,
    count_queries,
    rolled_back,
)
from service.testing._client import raise_propagated_errors

__all__ = ["CaptureOnCommit", "Cli", "Queries", "TestDatabase"]

COMMITTING = "service_committing"

CaptureOnCommit = Callable[..., AbstractContextManager[CapturedCallbacks]]
"""The type of ``service_on_commit``: ``capture_on_commit(*, execute=False)``."""


@dataclass(frozen=True)
class TestDatabase:
    """The session's database: its engine, and its tables in dependency order."""

    __test__ = False  # not a test class, for pytest

    url: str
    engine: AsyncEngine
    tables: Sequence[Table]


@pytest.fixture(scope="session")
def service_database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """``TEST_DATABASE_URL``, else a SQLite file of the session's own."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        return url
    return f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('db') / 'test.db'}"


@pytest.fixture(scope="session")
def service_test_tables() -> Sequence[Table]:
    """Tables of the tests' own, created after the migrations. Override it to add some."""
    return ()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def service_database(
    pytestconfig: pytest.Config, service_database_url: str, service_test_tables: Sequence[Table]
) -> AsyncIterator[TestDatabase]:
    """The schema, built once for the session by the migrations, and dropped after it."""
    engine = make_engine(service_database_url)
    try:
        await _drop_everything(engine)
    except (OSError, ConnectionError) as error:
        await engine.dispose()
        _unreachable(service_database_url, error)
    alembic_ini = Path(pytestconfig.rootpath, pytestconfig.getini("service_alembic_config"))
    await asyncio.to_thread(_migrate, alembic_ini, service_database_url)
    async with engine.begin() as connection:
        for table in sort_tables(service_test_tables):
            await connection.run_sync(table.create)
        tables = await connection.run_sync(_reflect)
    try:
        yield TestDatabase(service_database_url, engine, tables)
    finally:
        await _drop_everything(engine)
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
            async with service_database.engine.begin() as connection:
                for table in reversed(service_database.tables):
                    await connection.execute(table.delete())
        return
    async with rolled_back(service_database.engine) as outer:
        yield outer


class Cli:
    """Invokes ``service`` commands in-process; their units of work join the test's transaction."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url

    async def invoke(self, *args: str, input: str | None = None) -> Result:
        """Run ``service *args``: exit code, output and exception as ``click.testing`` has them."""
        loop = asyncio.get_running_loop()

        def on_the_tests_loop(coroutine: Coroutine[Any, Any, Any]) -> Any:
            return asyncio.run_coroutine_threadsafe(coroutine, loop).result()

        with running_coroutines_with(on_the_tests_loop):
            # click runs in a thread while this loop runs the command's coroutine.
            return await asyncio.to_thread(
                CliRunner().invoke,
                main,
                list(args),
                input=input,
                env={"DATABASE_URL": self.database_url},
            )


@pytest.fixture
def service_cli(service_database: TestDatabase) -> Cli:
    """``await service_cli.invoke("users", "create", ...)``: the CLI, in-process."""
    return Cli(service_database.url)


class Queries:
    """``at_most(n)`` asserts a block's query count; ``count()`` only records."""

    at_most = staticmethod(assert_max_queries)
    count = staticmethod(count_queries)


@pytest.fixture
def service_queries() -> Queries:
    return Queries()


@pytest.fixture
def service_on_commit() -> CaptureOnCommit:
    """``capture_on_commit``: ``with service_on_commit(execute=False) as callbacks: ...``."""
    return capture_on_commit


def _migrate(alembic_ini: Path, url: str) -> None:
    config = Config(alembic_ini)
    config.attributes["database_url"] = url
    config.attributes["configure_logger"] = False
    command.upgrade(config, "head")


async def _drop_everything(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        await connection.run_sync(lambda sync: _reflected(sync).drop_all(sync))


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
