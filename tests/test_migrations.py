"""Alembic runs with an async engine from the same DATABASE_URL as the app."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

ROOT = Path(__file__).resolve().parent.parent


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


async def _version(url: str) -> list[str]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(text("SELECT version_num FROM alembic_version"))
            return [row[0] for row in rows]
    finally:
        await engine.dispose()


async def test_upgrade_head_and_back(database_url: str, tmp_path: Path) -> None:
    # SQLite: a fresh file, created by the upgrade itself. PostgreSQL: the test database.
    url = database_url
    if url.startswith("sqlite"):
        url = f"sqlite+aiosqlite:///{tmp_path}/var/migrated.db"

    await _alembic("downgrade", "base", url=url)  # whatever an earlier run left
    output = await _alembic("upgrade", "head", url=url)
    assert "Running upgrade  -> 0001" in output
    assert await _version(url) == ["0001"]

    await _alembic("downgrade", "base", url=url)
    assert await _version(url) == []
