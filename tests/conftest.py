"""The suite uses the service's own pytest plugin, ``service.testing`` (see its docstring).

It runs against one database per process: ``TEST_DATABASE_URL``, else a SQLite
file. The layer's tests add tables of their own to the migrated schema.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
import redis
from quart import Quart
from sqlalchemy import Table

from tests.bookclub.conftest import AUDIT_TABLE, CLUB_TABLES
from tests.db.models import Part, Widget
from tests.newcomer.models import Author, Book

pytest_plugins = ["pytester", "tests.replication"]


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


REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@dataclass(frozen=True)
class Broker:
    """A Celery broker (Redis), and a queue of the test's own on it."""

    url: str
    queue: str


@pytest.fixture
def broker() -> Broker:
    """Redis is a real component of this suite: with ``CI=true`` an unreachable one fails it."""
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as error:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis at {REDIS_URL} is unreachable (CI=true: a failure): {error}")
        pytest.skip(f"Redis at {REDIS_URL} is unreachable: {error}")
    return Broker(REDIS_URL, f"test-{uuid.uuid4().hex}")
