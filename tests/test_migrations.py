"""Alembic builds the real schema, on SQLite and PostgreSQL, and it matches the models."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from tests.databases import plain_engine, scratch_postgres_database

ROOT = Path(__file__).resolve().parent.parent
LEDGER_TABLES = {
    "accounts",
    "entries",
    "idempotency_keys",
    "statements",
    "tokens",
    "transfers",
    "users",
}


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
    engine = plain_engine(url)
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


async def test_a_users_token_from_before_0005_keeps_working_after_it(
    empty_database: str,
) -> None:
    await _alembic("upgrade", "0003", url=empty_database)
    secret = "a-token-issued-before-prefixes"
    engine = plain_engine(empty_database)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                text(
                    "INSERT INTO users (id, name, email, email_key, token_hash, created_at) "
                    "VALUES (7, 'Ada', 'a@x.org', 'a@x.org', :hash, CURRENT_TIMESTAMP)"
                ),
                {"hash": hashlib.sha256(secret.encode()).hexdigest()},
            )

        await _alembic("upgrade", "head", url=empty_database)

        async with engine.connect() as connection:
            columns = await connection.run_sync(
                lambda sync: {column["name"] for column in inspect(sync).get_columns("users")}
            )
            tokens = (await connection.execute(text("SELECT user_id, name FROM tokens"))).all()
            token_hash, prefix = (
                await connection.execute(text("SELECT token_hash, prefix FROM tokens"))
            ).one()
    finally:
        await engine.dispose()
    assert "token_hash" not in columns
    assert [tuple(row) for row in tokens] == [(7, "registration")]
    # What authentication looks up (the requests of this suite's app use the suite's database).
    assert token_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert prefix is None

    # And back: the user keeps that token in the old column.
    await _alembic("downgrade", "0003", url=empty_database)
    engine = plain_engine(empty_database)
    try:
        async with engine.connect() as connection:
            stored = await connection.scalar(text("SELECT token_hash FROM users WHERE id = 7"))
    finally:
        await engine.dispose()
    assert stored == hashlib.sha256(secret.encode()).hexdigest()
