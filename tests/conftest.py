"""The suite uses the service's own pytest plugin, ``service.testing`` (see its docstring).

It runs against one database per process: ``TEST_DATABASE_URL``, else a SQLite
file. The layer's tests add tables of their own to the migrated schema.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from quart import Quart
from sqlalchemy import Table

from tests.bookclub.conftest import AUDIT_TABLE, CLUB_TABLES
from tests.db.models import Part, Widget
from tests.newcomer.models import Author, Book

pytest_plugins = ["pytester"]


@pytest.fixture(scope="session")
def service_test_tables() -> Sequence[Table]:
    tables = [Widget.__table__, Part.__table__, Author.__table__, Book.__table__]
    return [*tables, *CLUB_TABLES, AUDIT_TABLE]  # type: ignore[list-item]


@pytest.fixture
def errors_as_responses(service_app: Quart, monkeypatch: pytest.MonkeyPatch) -> None:
    """As in production: an unhandled exception answers a JSON 500 instead of propagating.

    The plugin's app is in testing mode, where Quart lets exceptions reach the test.
    """
    monkeypatch.setitem(service_app.config, "PROPAGATE_EXCEPTIONS", False)
