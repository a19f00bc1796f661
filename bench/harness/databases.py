"""The benchmarks' databases: PostgreSQL databases made and dropped on the machine's server,
and a checkout's schema migrated onto a database by its own Alembic migrations."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

from bench.harness.servers import ROOT

__all__ = [
    "DEFAULT_POSTGRES_URL",
    "drop_postgres_database",
    "ensure_postgres_database",
    "migrate",
    "postgres_url",
    "prepare_database",
    "recreate_postgres_database",
]

DEFAULT_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/bench"


def postgres_url(name: str) -> str:
    """``BENCH_POSTGRES_URL`` (default ``.../bench``) with the database ``<its name>_<name>``."""
    base = make_url(os.environ.get("BENCH_POSTGRES_URL", DEFAULT_POSTGRES_URL))
    return base.set(database=f"{base.database}_{name}").render_as_string(hide_password=False)


def _plain_name(url: str) -> str:
    name = make_url(url).database
    if not name or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"{url}: expected a plain database name")
    return name


async def _admin(url: str, *statements: str) -> bool:
    """Run ``statements`` on the server's ``postgres`` database; whether ``url``'s existed."""
    parsed = make_url(url)
    admin = create_async_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as connection:
            exists = await connection.scalar(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": parsed.database}
            )
            for statement in statements:
                await connection.execute(text(statement))
            return bool(exists)
    finally:
        await admin.dispose()


async def ensure_postgres_database(url: str) -> None:
    """Create the database ``url`` names if its server does not have it yet."""
    name = _plain_name(url)
    if not await _admin(url):
        await _admin(url, f'CREATE DATABASE "{name}"')


async def recreate_postgres_database(url: str) -> None:
    """Drop the database ``url`` names if it exists, and create it empty."""
    name = _plain_name(url)
    await _admin(url, f'DROP DATABASE IF EXISTS "{name}" (FORCE)', f'CREATE DATABASE "{name}"')


async def drop_postgres_database(url: str) -> None:
    await _admin(url, f'DROP DATABASE IF EXISTS "{_plain_name(url)}" (FORCE)')


def migrate(url: str, root: Path = ROOT) -> None:
    """``alembic upgrade head`` of the checkout at ``root`` (this one by default), on ``url``."""
    done = subprocess.run(
        [str(Path(sys.executable).parent / "alembic"), "upgrade", "head"],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root), "DATABASE_URL": url},
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{root}: alembic upgrade head failed:\n{done.stderr[-3000:]}")


async def prepare_database(url: str, root: Path = ROOT) -> None:
    """An empty database migrated to head by ``root``'s Alembic (PostgreSQL: made anew)."""
    if url.startswith("postgresql"):
        await recreate_postgres_database(url)
    await asyncio.to_thread(migrate, url, root)
