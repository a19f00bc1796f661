"""The book club, three ways: under the plugin, served in-process without it, and by Hypercorn.

- ``club(testing=...)``: the app started with ``app.test_app()`` and a test client; its
  units of work join the test's transaction unless the test is ``service_committing``
  (then they commit for real, as in production).
- ``served_club``: the app in a Hypercorn process of its own on the test database.
- ``stored``: what is stored, read through a connection that is not the app's.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest
from quart import Quart
from quart.typing import TestClientProtocol as Client
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bench.harness import Server
from service.db.testing import test_database
from service.testing import raise_propagated_errors
from tests.bookclub.app import create_app
from tests.bookclub.models import AuditBase, AuditEntry, Loan, Member, Tag, Volume
from tests.databases import plain_engine as make_plain_engine

Serve = Callable[..., Awaitable[tuple[Quart, Client]]]
Stored = Callable[[Any], Awaitable[list[Any]]]

CLUB_TABLES = [Member.__table__, Volume.__table__, Loan.__table__, Tag.__table__]
AUDIT_TABLE = AuditEntry.__table__
"""Made in the app's database too: a write routed there by mistake would land silently."""


@pytest.fixture(scope="session")
async def audit_database_url(service_database_url: str) -> AsyncIterator[str]:
    """A second database, with the audit table, for ``unit_of_work(bind=...)``."""
    async with test_database(service_database_url, prefix="audit_") as url:
        engine = make_plain_engine(url)
        async with engine.begin() as connection:
            await connection.run_sync(AuditBase.metadata.create_all)
        await engine.dispose()
        yield url


@pytest.fixture(scope="session")
async def plain_engine(service_database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine of SQLAlchemy's own on the test database, none of the layer's doing."""
    engine = make_plain_engine(service_database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
async def club(service_database_url: str, audit_database_url: str) -> AsyncIterator[Serve]:
    async with AsyncExitStack() as stack:

        async def serve(*, testing: bool = False) -> tuple[Quart, Client]:
            app = create_app(
                {
                    "DATABASE_URL": service_database_url,
                    "AUDIT_DATABASE_URL": audit_database_url,
                    "JOBS_BACKEND": "eager",
                    "TESTING": testing,
                }
            )
            raise_propagated_errors(app)
            test_app = app.test_app()
            await test_app.startup()
            stack.push_async_callback(test_app.shutdown)
            return app, app.test_client()

        yield serve


@pytest.fixture
def stored(service_connection: AsyncConnection | None, plain_engine: AsyncEngine) -> Stored:
    """``await stored(Member.name)``: the column's values, sorted, as the database has them."""

    async def read(column: Any) -> list[Any]:
        query = select(column).order_by(column)
        if service_connection is not None:
            return list((await service_connection.scalars(query)).all())
        async with plain_engine.connect() as fresh:
            return list((await fresh.scalars(query)).all())

    return read


class AuditEntries:
    """``await audit_entries()``: what the audit database holds (its units always commit)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def __call__(self) -> list[str]:
        async with self.engine.connect() as connection:
            query = select(AuditEntry.what).order_by(AuditEntry.what)
            return list((await connection.scalars(query)).all())

    async def clear(self) -> None:
        async with self.engine.begin() as connection:
            await connection.execute(delete(AuditEntry))


@pytest.fixture
async def audit_entries(audit_database_url: str) -> AsyncIterator[AuditEntries]:
    """The audit database's entries, emptied after the test."""
    entries = AuditEntries(make_plain_engine(audit_database_url))
    yield entries
    await entries.clear()
    await entries.engine.dispose()


@pytest.fixture(scope="module")
async def served_club(
    service_database_url: str, audit_database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[httpx.AsyncClient]:
    """The club in a Hypercorn process (its jobs in its own dispatcher); a client of it."""
    env = {
        "CLUB_DATABASE_URL": service_database_url,
        "CLUB_AUDIT_DATABASE_URL": audit_database_url,
        "CLUB_JOBS_BACKEND": "background",
    }
    server = Server("bookclub", "tests.bookclub.served:app", env, tmp_path_factory.mktemp("log"))
    try:
        await asyncio.to_thread(server.wait_ready, "/volumes")
        async with httpx.AsyncClient(base_url=server.base, timeout=30) as client:
            yield client
    finally:
        await asyncio.to_thread(server.stop)
