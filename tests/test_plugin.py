"""The pytest plugin, ``service.testing``, as a handler author meets it: through pytester.

Each check runs a real pytest in a subprocess against the service's own app
and migrations, on a database of its own of the kind this suite runs on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from service.db.testing import test_database
from tests.databases import plain_engine, scratch_postgres_database

ROOT = Path(__file__).resolve().parent.parent
HEAD = ScriptDirectory.from_config(Config(ROOT / "alembic.ini")).get_current_head()

HANDLER_TESTS = f'''
import pytest
from sqlalchemy import func, select, text

from service.db import on_commit, session, unit_of_work
from service.ledger.models import User
from service.ledger.factories import AccountFactory, UserFactory


async def count_users(connection):
    return await connection.scalar(select(func.count()).select_from(User))


async def test_01_a_request_writes_into_the_test_transaction(service_client, service_connection):
    response = await service_client.post("/users", json={{"name": "Ada", "email": "a@example.com"}})
    assert response.status_code == 201
    assert await count_users(service_connection) == 1


async def test_02_the_next_test_starts_from_an_empty_database(service_connection):
    assert await count_users(service_connection) == 0


async def test_03_code_that_commits_rolls_back_and_nests_runs_unchanged(service_connection):
    async with unit_of_work():
        await UserFactory.build(name="committed").save()
        await session.commit()
        await UserFactory.build(name="rolled back").save()
        await session.rollback()
        async with unit_of_work():
            await UserFactory.build(name="nested").save()
        with pytest.raises(LookupError):
            async with unit_of_work():
                await UserFactory.build(name="failed savepoint").save()
                raise LookupError
    names = (await service_connection.scalars(select(User.name).order_by(User.name))).all()
    assert names == ["committed", "nested"]


async def test_04_factories_save_inside_the_test_transaction(service_client, service_connection):
    user, token = await UserFactory.create_with_token(name="Grace")
    account = await AccountFactory.create_async(user_id=user.id, name="Savings")
    response = await service_client.get(
        f"/accounts/{{account.id}}", headers={{"Authorization": f"Bearer {{token}}"}}
    )
    assert response.status_code == 200
    assert (await response.get_json())["name"] == "Savings"
    assert await count_users(service_connection) == 1


async def test_05_on_commit_callbacks_are_captured_and_run_on_demand(service_on_commit):
    ran = []
    with service_on_commit() as callbacks:
        async with unit_of_work():
            on_commit(lambda: ran.append("committed"))
        with pytest.raises(LookupError):
            async with unit_of_work():
                on_commit(lambda: ran.append("rolled back"))
                raise LookupError
    assert (len(callbacks), ran) == (1, [])
    await callbacks.run()
    assert ran == ["committed"]

    with service_on_commit(execute=True) as callbacks:
        async with unit_of_work():
            on_commit(lambda: ran.append("executed"))
    assert (len(callbacks), ran) == (1, ["committed", "executed"])


async def test_06_a_query_count_over_the_limit_fails_and_shows_the_sql(
    service_client, service_queries
):
    user, token = await UserFactory.create_with_token()
    await AccountFactory.create_batch_async(3, user_id=user.id)
    with service_queries.at_most(1):
        response = await service_client.get(
            "/accounts", headers={{"Authorization": f"Bearer {{token}}"}}
        )
    assert response.status_code == 200


@pytest.mark.service_committing
async def test_07_a_committing_test_commits_for_real(
    service_client, service_engine, service_connection
):
    assert service_connection is None
    response = await service_client.post("/users", json={{"name": "Bo", "email": "b@example.com"}})
    assert response.status_code == 201
    async with service_engine.connect() as fresh:
        assert await count_users(fresh) == 1


async def test_08_and_its_tables_are_emptied_after_it(service_connection):
    assert await count_users(service_connection) == 0


async def test_09_the_schema_is_built_by_the_migrations(service_connection):
    version = await service_connection.scalar(text("SELECT version_num FROM alembic_version"))
    assert version == "{HEAD}"


async def test_10_cli_commands_and_eager_jobs_join_the_test_transaction(
    service_cli, service_client, service_connection
):
    created = await service_cli.invoke("users", "create", "--name", "C", "--email", "c@x.org")
    assert created.exit_code == 0, created.output
    headers = {{"Authorization": f"Bearer {{created.output.splitlines()[-1]}}"}}
    new = {{"name": "M", "currency": "USD"}}
    account = await service_client.post("/accounts", json=new, headers=headers)
    account_id = (await account.get_json())["id"]
    period = {{"from": "2026-01-01", "to": "2026-01-02"}}
    asked = await service_client.post(
        f"/accounts/{{account_id}}/statements", json=period, headers=headers
    )
    statement_id = (await asked.get_json())["id"]
    statement = await service_client.get(f"/statements/{{statement_id}}", headers=headers)
    assert (await statement.get_json())["status"] == "ready"  # the job ran after the commit
    assert await count_users(service_connection) == 1


async def test_11_and_leave_nothing_behind(service_connection):
    statements = await service_connection.scalar(text("SELECT count(*) FROM statements"))
    assert (await count_users(service_connection), statements) == (0, 0)
'''


@pytest.fixture
async def plugin_database(
    service_database_url: str, monkeypatch: pytest.MonkeyPatch, pytester: pytest.Pytester
) -> AsyncIterator[str]:
    """A database for the inner runs, never the suite's own: they drop everything in it."""
    if service_database_url.startswith("sqlite"):
        url = f"sqlite+aiosqlite:///{pytester.path / 'plugin.db'}"
        monkeypatch.setenv("TEST_DATABASE_URL", url)
        yield url
        return
    async with scratch_postgres_database(service_database_url, "plugin") as url:
        monkeypatch.setenv("TEST_DATABASE_URL", url)
        yield url


def _configure(pytester: pytest.Pytester, *, loop_scope: str = "session") -> None:
    pytester.makeini(
        f"""
        [pytest]
        service_app_factory = service.app:create_app
        service_cli = service.cli:main
        asyncio_mode = auto
        asyncio_default_fixture_loop_scope = {loop_scope}
        asyncio_default_test_loop_scope = {loop_scope}
        service_alembic_config = {ROOT / "alembic.ini"}
        """
    )


async def _tables(url: str) -> list[str]:
    engine = plain_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(lambda sync: inspect(sync).get_table_names())
    finally:
        await engine.dispose()


@pytest.mark.service_committing  # the inner run has a database of its own
async def test_handler_tests_are_isolated_and_get_the_plugins_tools(
    pytester: pytest.Pytester, plugin_database: str
) -> None:
    _configure(pytester)
    pytester.makepyfile(test_handlers=HANDLER_TESTS)

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-v")

    result.assert_outcomes(passed=10, failed=1)
    result.stdout.fnmatch_lines(["*test_06_a_query_count_over_the_limit_fails* FAILED*"])
    result.stdout.fnmatch_lines(
        [
            "*AssertionError: 3 queries ran where at most 1 were expected:",
            "*1. SELECT tokens.id, *",
            "*   FROM tokens*",
            "*2. SELECT accounts.id, *",
            "*   FROM accounts*",
            "*3. UPDATE tokens SET last_used_at=*",
        ]
    )
    assert await _tables(plugin_database) == []  # the schema is dropped after the session


@pytest.mark.service_committing
def test_tests_on_a_loop_of_their_own_are_refused_with_the_fix(
    pytester: pytest.Pytester, plugin_database: str
) -> None:
    _configure(pytester, loop_scope="function")
    pytester.makepyfile(test_nothing="def test_nothing(): pass")

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(['*asyncio_default_test_loop_scope = "session"*'])


@pytest.mark.service_committing
async def test_a_second_run_at_once_gets_a_database_of_its_own_and_leaves_the_first_alone(
    service_database_url: str,
) -> None:
    if not service_database_url.startswith("postgresql"):
        pytest.skip("SQLite: each run's database is a file in a temporary directory of its own")
    async with test_database(service_database_url, prefix="twice_") as first:
        engine = plain_engine(first)
        try:
            async with engine.connect() as running:  # the first run, connected while it runs
                await running.execute(text("CREATE TABLE kept (id integer)"))
                await running.commit()
                async with test_database(service_database_url, prefix="twice_") as second:
                    assert second != first
                    assert second.endswith(f"{first.rpartition('/')[2]}_2")
                kept = await running.scalar(text("SELECT count(*) FROM kept"))
        finally:
            await engine.dispose()

    assert kept == 0  # the first run's database, and its connection, are still there
