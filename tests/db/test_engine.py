"""SQLite as the embedded default, and what every engine must do under concurrency."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest
from sqlalchemy import make_url, text
from sqlalchemy.exc import DBAPIError

from service.db import make_engine, unit_of_work
from service.db._server import PING_AFTER
from tests.databases import PGBOUNCER
from tests.db.conftest import ReadNames
from tests.db.models import Widget
from tests.db.silent import silent_server


@pytest.mark.parametrize(
    "url", ["sqlite+aiosqlite://", "sqlite+aiosqlite:///:memory:", "sqlite:///file:x?mode=memory"]
)
def test_an_in_memory_sqlite_database_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="use a SQLite file"):
        make_engine(url)


async def test_a_sqlite_file_gets_its_directory_and_pragmas(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path}/new/dir/service.db")
    try:
        async with engine.connect() as connection:
            pragmas = {
                name: (await connection.execute(text(f"PRAGMA {name}"))).scalar()
                for name in ("foreign_keys", "journal_mode", "busy_timeout")
            }
    finally:
        await engine.dispose()
    assert (tmp_path / "new/dir/service.db").exists()
    assert pragmas == {"foreign_keys": 1, "journal_mode": "wal", "busy_timeout": 30_000}


@pytest.mark.service_committing
async def test_concurrent_read_then_write_units_of_work_never_fail_with_locked(
    stored_names: ReadNames,
) -> None:
    # Each unit reads, yields to the others, then writes: with a DEFERRED BEGIN
    # on SQLite the upgrade to a write lock fails at once ("database is locked").
    @unit_of_work()
    async def read_then_write(number: int) -> None:
        seen = await Widget.query.count()
        await asyncio.sleep(0.01)
        await Widget.create(name=f"w{number:02}", size=seen)

    await asyncio.gather(*(read_then_write(number) for number in range(12)))

    assert await stored_names() == [f"w{number:02}" for number in range(12)]


@pytest.mark.service_committing
async def test_readers_are_not_blocked_by_an_open_write_transaction() -> None:
    writing = asyncio.Event()
    release = asyncio.Event()

    @unit_of_work()
    async def writer() -> None:
        await Widget.create(name="uncommitted")
        writing.set()
        await release.wait()

    @unit_of_work(readonly=True)
    async def reader() -> int:
        return await Widget.query.count()

    write = asyncio.create_task(writer())
    await asyncio.wait_for(writing.wait(), 5)
    try:
        seen = await asyncio.wait_for(reader(), 5)
    finally:
        release.set()
        await write
    assert seen == 0


@pytest.mark.service_committing
async def test_a_foreign_key_is_enforced(service_database_url: str) -> None:
    from sqlalchemy.exc import IntegrityError

    from tests.db.models import Part

    with pytest.raises(IntegrityError):
        async with unit_of_work():
            await Part.create(widget_id=424242)


async def test_a_connection_attempt_gives_up_after_the_connect_timeout() -> None:
    async with silent_server() as port:
        engine = make_engine(
            f"postgresql+asyncpg://postgres@127.0.0.1:{port}/x", connect_timeout=0.3
        )
        started = time.monotonic()
        try:
            with pytest.raises(TimeoutError):
                async with engine.connect():
                    pass
        finally:
            await engine.dispose()
    assert time.monotonic() - started < 3


@pytest.fixture
def postgres_url(service_database_url: str) -> str:
    if not service_database_url.startswith("postgresql"):
        pytest.skip("needs a database server (PostgreSQL)")
    return service_database_url


@pytest.fixture
def direct_postgres_url(postgres_url: str) -> str:
    if PGBOUNCER:
        # A backend's pid names a server connection PgBouncer shares among its clients: the
        # killer's own, as like as not. The PgBouncer run checks the service, not this.
        pytest.skip("needs a client connection of its own on the server (not PgBouncer's)")
    return postgres_url


@pytest.mark.service_committing
async def test_a_statement_gives_up_after_the_command_timeout(postgres_url: str) -> None:
    engine = make_engine(postgres_url, command_timeout=0.3, pgbouncer=PGBOUNCER)
    started = time.monotonic()
    try:
        with pytest.raises(TimeoutError):
            async with engine.connect() as connection:
                await connection.execute(text("SELECT pg_sleep(10)"))
    finally:
        await engine.dispose()
    assert time.monotonic() - started < 5


@pytest.mark.service_committing
async def test_a_pooled_connection_the_server_dropped_is_replaced_before_use(
    direct_postgres_url: str,
) -> None:
    engine = make_engine(direct_postgres_url, pool_size=1, max_overflow=0)
    other = make_engine(direct_postgres_url)
    try:
        async with engine.connect() as connection:
            dropped = await connection.scalar(text("SELECT pg_backend_pid()"))
        async with other.connect() as killer:
            await killer.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": dropped})
        await asyncio.sleep(PING_AFTER + 0.1)  # idle long enough to be checked at checkout

        async with engine.connect() as connection:
            replaced = await connection.scalar(text("SELECT pg_backend_pid()"))
    finally:
        await engine.dispose()
        await other.dispose()
    assert replaced != dropped


@pytest.mark.service_committing
async def test_a_connection_dropped_within_the_window_fails_once_then_is_replaced(
    direct_postgres_url: str,
) -> None:
    # Used a moment ago, it is trusted without a check (a round trip saved on nearly every
    # request); if the server dropped it meanwhile, that one use fails as a lost connection.
    engine = make_engine(direct_postgres_url, pool_size=1, max_overflow=0)
    other = make_engine(direct_postgres_url)
    try:
        async with engine.connect() as connection:
            dropped = await connection.scalar(text("SELECT pg_backend_pid()"))
        async with other.connect() as killer:
            await killer.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": dropped})

        with pytest.raises(DBAPIError) as failed:
            async with engine.connect() as connection:
                await connection.scalar(text("SELECT 1"))
        async with engine.connect() as connection:
            replaced = await connection.scalar(text("SELECT pg_backend_pid()"))
    finally:
        await engine.dispose()
        await other.dispose()
    assert failed.value.connection_invalidated
    assert replaced != dropped


@pytest.mark.service_committing
async def test_an_invalidated_sqlite_connection_releases_the_write_lock_at_once(
    service_database_url: str,
) -> None:
    # As when a request is cancelled between a SELECT's first step and its last fetch: the
    # statement is still active when the connection is invalidated and closed.
    if not service_database_url.startswith("sqlite"):
        pytest.skip("SQLite's write lock")
    path = make_url(service_database_url).database
    assert path is not None
    engine = make_engine(service_database_url)
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))  # BEGIN IMMEDIATE: the write lock
            driver = (await connection.get_raw_connection()).driver_connection
            assert driver is not None
            unfinished = await driver.execute("SELECT 1 UNION ALL SELECT 2")
            await connection.invalidate()

            def another_writer() -> None:
                other = sqlite3.connect(path, timeout=0.5, isolation_level=None)
                try:
                    other.execute("BEGIN IMMEDIATE")
                    other.execute("ROLLBACK")
                finally:
                    other.close()

            await asyncio.to_thread(another_writer)  # "database is locked" without the fix
            del unfinished
    finally:
        await engine.dispose()
