from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
from quart import Quart
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from service.jobs import JobRow
from tests.databases import plain_engine
from tests.db.models import Widget
from tests.jobs import examples
from tests.service_app import make_service_test_app

Serving = Callable[..., AbstractAsyncContextManager[Quart]]

FAST = {"JOBS_SWEEP_INTERVAL": 0.05, "JOBS_LEASE": 1.0}
"""A dispatcher that sweeps every 50 ms, with leases of a second."""


@pytest.fixture(autouse=True)
def fresh_examples() -> None:
    examples.started.clear()
    examples.failing.clear()
    examples.release.clear()


@pytest.fixture(scope="session")
async def reader(service_database_url: str) -> AsyncIterator[AsyncEngine]:
    """A plain engine, none of the layer's doing (no BEGIN IMMEDIATE), to read what is stored."""
    reader = plain_engine(service_database_url)
    yield reader
    await reader.dispose()


@pytest.fixture
def serving(service_database_url: str) -> Serving:
    """``async with serving(**config) as app:`` the app with a real dispatcher, serving."""

    @asynccontextmanager
    async def serve(**config: Any) -> AsyncIterator[Quart]:
        app = make_service_test_app(
            {"DATABASE_URL": service_database_url, "JOBS_BACKEND": "background", **FAST, **config}
        )
        async with app.test_app():
            async with app.app_context():
                yield app

    return serve


async def job_rows(engine: AsyncEngine, *, name: str | None = None) -> list[Any]:
    """The outbox's rows (but the built-in periodic ones), read through a connection of its own."""
    query = select(JobRow).where(JobRow.dedupe_key.is_(None)).order_by(JobRow.id)
    if name is not None:
        query = query.where(JobRow.name == name)
    async with engine.connect() as connection:
        return list((await connection.execute(query)).all())


async def widget_names(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as connection:
        return list((await connection.scalars(select(Widget.name).order_by(Widget.name))).all())


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 20.0) -> None:
    """Wait until ``check()`` holds; fail after ``seconds`` (a generous bound, not a timing)."""
    async with asyncio.timeout(seconds):
        while True:  # the database is polled: nothing to wait on in this process
            if await check():
                return
            await asyncio.sleep(0.02)
