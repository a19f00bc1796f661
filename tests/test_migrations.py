"""Alembic builds the real schema, on SQLite and PostgreSQL, and it matches the models."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import create_async_engine

from tests.databases import scratch_postgres_database

ROOT = Path(__file__).resolve().parent.parent
LEDGER_TABLES = {"accounts", "entries", "idempotency_keys", "transfers", "users"}


async def _alembic(*args: str, url: str) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "alembic",
        *args,
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    assert process.returncode == 0, output.decode()
    return output.decode()


async def _tables(url: str) -> set[str]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            return set(await connection.run_sync(lambda sync: inspect(sync).get_table_names()))
    finally:
        await engine.dispose()


@pytest.fixture
async def empty_database(service_database_url: str, tmp_path: Path) -> AsyncIterator[str]:
    """A database with nothing in it, of the kind the suite runs on."""
    if service_database_url.startswith("sqlite"):
        yield f"sqlite+aiosqlite:///{tmp_path}/var/migrated.db"  # created by the upgrade
        return
    async with scratch_postgres_database(service_database_url, "migrations") as url:
        yield url


async def test_upgrade_builds_the_schema_the_models_describe(empty_database: str) -> None:
    output = await _alembic("upgrade", "head", url=empty_database)
    assert "Running upgrade 0001 -> 0002" in output
    assert LEDGER_TABLES <= await _tables(empty_database)

    # Autogenerate finds no difference between the migrated schema and the models.
    assert "No new upgrade operations detected" in await _alembic("check", url=empty_database)

    await _alembic("downgrade", "base", url=empty_database)
    assert await _tables(empty_database) == {"alembic_version"}
