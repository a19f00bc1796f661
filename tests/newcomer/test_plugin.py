"""The test plugin, as the newcomer meets it: in a test run of their own (pytester).

- a handler's exception reaches their test, not an HTML traceback page;
- their factories create no related rows unless asked;
- installed but not configured, the plugin does nothing at all.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.databases import scratch_postgres_database

ROOT = Path(__file__).resolve().parents[2]

NEWCOMER_TESTS = """
import pytest
from sqlalchemy import func, select

from service.db import unit_of_work
from service.db.factories import ActiveRecordFactory
from tests.newcomer.models import Author, Book


class AuthorFactory(ActiveRecordFactory[Author]):
    pass


class BookFactory(ActiveRecordFactory[Book]):
    pass


async def test_a_handler_exception_reaches_the_test(service_client):
    with pytest.raises(RuntimeError, match="the handler failed"):
        await service_client.get("/crash")


async def test_http_errors_are_still_answers(service_client):
    assert (await service_client.get("/forbidden")).status_code == 403


async def test_factories_make_no_related_rows(service_connection):
    author = await AuthorFactory.create_async()
    await BookFactory.create_async(author_id=author.id)

    authors = await service_connection.scalar(select(func.count()).select_from(Author))
    books = await service_connection.scalar(select(func.count()).select_from(Book))
    assert (authors, books) == (1, 1)
"""

INERT = """
def test_nothing_of_the_plugin_is_here(request):
    assert not [name for name in request.fixturenames if name.startswith("service_")]
"""


@pytest.fixture
async def inner_database(
    service_database_url: str, monkeypatch: pytest.MonkeyPatch, pytester: pytest.Pytester
) -> AsyncIterator[str]:
    if service_database_url.startswith("sqlite"):
        url = f"sqlite+aiosqlite:///{pytester.path / 'newcomer.db'}"
        monkeypatch.setenv("TEST_DATABASE_URL", url)
        yield url
        return
    async with scratch_postgres_database(service_database_url, "newcomer") as url:
        monkeypatch.setenv("TEST_DATABASE_URL", url)
        yield url


def _ini(pytester: pytest.Pytester, *settings: str) -> None:
    lines = [
        "[pytest]",
        "asyncio_mode = auto",
        "asyncio_default_fixture_loop_scope = session",
        "asyncio_default_test_loop_scope = session",
        *settings,
    ]
    pytester.makeini("\n".join(lines) + "\n")


@pytest.mark.service_committing  # the inner run has a database of its own
async def test_the_plugin_serves_the_newcomers_app_and_factories(
    pytester: pytest.Pytester, inner_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makeconftest(
        """
        import pytest
        from tests.newcomer.models import Author, Book

        @pytest.fixture(scope="session")
        def service_test_tables():
            return [Author.__table__, Book.__table__]
        """
    )
    _ini(
        pytester,
        "service_app_factory = tests.newcomer.app:create_app",
        f"service_alembic_config = {ROOT / 'alembic.ini'}",
    )
    pytester.makepyfile(test_newcomer=NEWCOMER_TESTS)

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-v")

    result.assert_outcomes(passed=3)


@pytest.mark.service_committing
def test_installed_but_not_configured_the_plugin_is_inert(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An unreachable database, and CI=true: a configured plugin would fail the run.
    monkeypatch.setenv("TEST_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:1/none")
    monkeypatch.setenv("CI", "true")
    _ini(pytester)
    pytester.makepyfile(test_other_project=INERT)

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")

    result.assert_outcomes(passed=1)
