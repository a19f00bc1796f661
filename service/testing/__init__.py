"""The pytest plugin for tests of this service: isolated, fast, honest database tests.

Registered through the ``pytest11`` entry point, so installing the service is
enough. Every fixture is named ``service_*``:

- ``service_app``: the app in testing mode, serving (its lifespan has run), with
  the rate limits off; ``service_client`` is a test client of it.
- ``service_connection`` (autouse): the test's outer transaction. The schema is
  built once per session by the Alembic migrations; each test runs inside a
  transaction rolled back at its end, which every session joins through
  savepoints, so code that commits, rolls back or nests runs unchanged. Requests,
  in-process CLI commands and eager jobs all join it. The fixture's value is
  that connection: read what the code wrote through it.
- ``service_cli``: ``await service_cli.invoke("add-note", "hello")`` runs a
  command in-process, its unit of work joining the test's transaction: one of
  the app's (``app.cli``, ``Database.command``), or of the click group the
  ``service_cli`` ini option names.
- ``service_queries``: ``with service_queries.at_most(3): ...`` fails and prints
  the SQL if the block runs more queries (N+1 queries).
- ``service_on_commit``: ``with service_on_commit() as callbacks: ...`` captures
  the on-commit callbacks; ``await callbacks.run()`` runs them.
- ``@pytest.mark.service_committing``: the test uses real commits instead (for
  work across several connections); the tables are emptied after it.

Data factories are in ``service.db.factories``.

Settings (pytest ini options): ``service_app_factory`` (``module:callable``
taking a config mapping), ``service_alembic_config`` (``alembic.ini`` in the
rootdir by default) or ``service_metadata`` (``module:metadata``, built with
``create_all``, for an app without migrations), and ``service_cli``. Until
``service_app_factory`` is set the plugin is inert, as pytest-django is until it
is configured: installing the service adds no fixture, imports nothing optional,
and makes no database in another project's test run. The database is one of the
plugin's own, made for the session and dropped after it: ``test_<name>`` next to
``TEST_DATABASE_URL``'s database, else a SQLite file in a temporary directory.
With ``CI=true`` an unreachable database fails the run instead of skipping the
tests.
"""

from __future__ import annotations

import pytest

from service.testing._client import raise_propagated_errors
from service.testing._support import COMMITTING, CaptureOnCommit, Cli, Queries, TestDatabase

__all__ = ["CaptureOnCommit", "Cli", "Queries", "TestDatabase", "raise_propagated_errors"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "service_app_factory",
        "`module:callable` that makes the app from a config mapping; the plugin is inert "
        "until it is set",
        default="",
    )
    parser.addini(
        "service_alembic_config",
        "the alembic.ini whose migrations build the test schema, relative to the rootdir",
        default="alembic.ini",
    )
    parser.addini(
        "service_cli",
        "`module:attribute` of the click group `service_cli` invokes; the app's own `app.cli` "
        "by default",
        default="",
    )
    parser.addini(
        "service_metadata",
        "`module:attribute` of the MetaData whose create_all builds the test schema, for an "
        "app without Alembic migrations (then service_alembic_config is not used)",
        default="",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{COMMITTING}: real commits instead of the rolled-back outer transaction; "
        "the tables are emptied after the test",
    )
    if not config.getini("service_app_factory"):
        return  # not configured: no fixtures, no database
    if config.getini("asyncio_default_test_loop_scope") != "session":
        raise pytest.UsageError(
            "service.testing: the test database connection lives on the session's event loop; "
            'set `asyncio_default_test_loop_scope = "session"` in the pytest configuration.'
        )
    # Only now: the fixtures need pytest-asyncio, which a project that merely installs the
    # service may not have.
    from service.testing import _fixtures

    config.pluginmanager.register(_fixtures, "service.testing.fixtures")
