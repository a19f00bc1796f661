"""The test plugin in an outsider's project (pytester): safe, light, and production's equal.

- It makes a test database of its own (``test_<name>`` next to ``TEST_DATABASE_URL``'s,
  or a temporary SQLite file) and drops it: the developer's database is never touched,
  even by an Alembic ``env.py`` that reads ``DATABASE_URL`` as most do.
- Without Alembic, ``service_metadata`` names the MetaData whose ``create_all`` builds it.
- Installed but not configured, it imports nothing optional (pytest-asyncio) and
  brings no model of the ledger along.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import inspect

from tests.databases import plain_engine, scratch_postgres_database

ROOT = Path(__file__).resolve().parents[2]

NOTES_APP = """
from quart import Quart, request
from sqlalchemy.orm import Mapped, mapped_column

from service.db import Model
from service.db.quart import Database


class Note(Model):
    __tablename__ = "notes"

    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str]


def create_app(config):
    app = Quart(__name__)
    app.config.update(config)
    Database(app)

    @app.post("/notes")
    async def add_note():
        note = await Note.create(text=(await request.get_json())["text"])
        return {"id": note.id}, 201

    return app
"""

NOTES_TESTS = """
from sqlalchemy import text


async def test_a_note_is_written_into_the_test_transaction(service_client, service_connection):
    response = await service_client.post("/notes", json={"text": "hello"})
    assert response.status_code == 201
    assert await service_connection.scalar(text("SELECT count(*) FROM notes")) == 1


async def test_the_next_test_starts_empty(service_connection):
    assert await service_connection.scalar(text("SELECT count(*) FROM notes")) == 0
"""

# An env.py as people write them: the URL from the environment, nothing of the plugin's.
ENV_PY = """
import asyncio
import os

from alembic import context
from sqlalchemy.ext.asyncio import create_async_engine


def run(connection):
    context.configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


async def main():
    options = {}
    if os.environ.get("DATABASE_PGBOUNCER") == "true":  # behind PgBouncer in transaction mode
        options["connect_args"] = {"statement_cache_size": 0, "prepared_statement_cache_size": 0}
    engine = create_async_engine(os.environ["DATABASE_URL"], **options)
    async with engine.connect() as connection:
        await connection.run_sync(run)
        await connection.commit()
    await engine.dispose()


asyncio.run(main())
"""

MIGRATION = """
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade():
    op.create_table(
        "notes",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("text", sa.String, nullable=False),
    )
"""


@pytest.fixture
async def developers_database(
    service_database_url: str, monkeypatch: pytest.MonkeyPatch, pytester: pytest.Pytester
) -> AsyncIterator[str]:
    """The newcomer's development database: what ``DATABASE_URL`` and the plugin are given."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(pytester.path), str(ROOT)]))
    if service_database_url.startswith("sqlite"):
        url = f"sqlite+aiosqlite:///{pytester.path / 'development.db'}"
    else:
        async with scratch_postgres_database(service_database_url, "development") as url:
            monkeypatch.setenv("TEST_DATABASE_URL", url)
            monkeypatch.setenv("DATABASE_URL", url)
            yield url
        return
    monkeypatch.setenv("TEST_DATABASE_URL", url)
    monkeypatch.setenv("DATABASE_URL", url)
    yield url


async def _tables(url: str) -> list[str]:
    engine = plain_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(lambda sync: inspect(sync).get_table_names())
    finally:
        await engine.dispose()


def _ini(pytester: pytest.Pytester, *settings: str) -> None:
    lines = [
        "[pytest]",
        "asyncio_mode = auto",
        "asyncio_default_fixture_loop_scope = session",
        "asyncio_default_test_loop_scope = session",
        *settings,
    ]
    pytester.makeini("\n".join(lines) + "\n")


@pytest.mark.service_committing  # the inner run has databases of its own
async def test_with_alembic_the_plugin_migrates_its_own_database_never_the_developers(
    pytester: pytest.Pytester, developers_database: str
) -> None:
    pytester.makepyfile(notes_app=NOTES_APP, test_notes=NOTES_TESTS)
    pytester.makefile(".ini", alembic="[alembic]\nscript_location = migrations\n")
    (pytester.path / "migrations" / "versions").mkdir(parents=True)
    (pytester.path / "migrations" / "env.py").write_text(ENV_PY)
    (pytester.path / "migrations" / "versions" / "0001_notes.py").write_text(MIGRATION)
    _ini(pytester, "service_app_factory = notes_app:create_app")

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")

    result.assert_outcomes(passed=2)
    assert await _tables(developers_database) == []


@pytest.mark.service_committing
async def test_without_alembic_one_setting_builds_the_schema_from_the_models(
    pytester: pytest.Pytester, developers_database: str
) -> None:
    pytester.makepyfile(notes_app=NOTES_APP, test_notes=NOTES_TESTS)
    _ini(
        pytester,
        "service_app_factory = notes_app:create_app",
        "service_metadata = notes_app:Model.metadata",
    )

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")

    result.assert_outcomes(passed=2)
    assert await _tables(developers_database) == []


@pytest.mark.service_committing
def test_with_neither_the_plugin_says_what_to_set(
    pytester: pytest.Pytester, developers_database: str
) -> None:
    pytester.makepyfile(notes_app=NOTES_APP, test_notes=NOTES_TESTS)
    _ini(pytester, "service_app_factory = notes_app:create_app")

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")

    assert result.ret != 0
    result.stdout.fnmatch_lines(["*Set `service_metadata = module:metadata`*"])


def test_installed_but_not_configured_it_needs_no_pytest_asyncio(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A project whose environment has the service installed, but not pytest-asyncio.
    shadow = pytester.mkdir("shadow")
    (shadow / "pytest_asyncio.py").write_text("raise ImportError('pytest-asyncio is absent')\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(shadow), str(ROOT)]))
    pytester.makeini("[pytest]\n")
    pytester.makepyfile(test_other="def test_other(): pass")

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:asyncio")

    result.assert_outcomes(passed=1)


def test_the_plugin_and_the_factories_bring_no_model_of_the_ledger() -> None:
    probe = (
        "import service.testing, service.db.factories\n"
        "from service.db import Model\n"
        "print(sorted(Model.metadata.tables))\n"
    )

    printed = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout

    assert printed.strip() == "[]"
