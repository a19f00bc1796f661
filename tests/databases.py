"""Databases of a test's own, next to the suite's: for runs that drop or rebuild everything.

And plain engines (none of the layer's doing) that work through PgBouncer in transaction
mode when the run goes through one (``make test-pgbouncer`` sets ``DATABASE_PGBOUNCER``).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import URL, make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

PGBOUNCER = os.environ.get("DATABASE_PGBOUNCER", "").lower() in ("1", "true", "yes", "on")
"""The run goes through PgBouncer in transaction mode: no statement may stay prepared."""


def plain_engine(url: str | URL, **options: Any) -> AsyncEngine:
    """``create_async_engine(url, **options)``, its statements unnamed and uncached through
    PgBouncer (as ``make_engine(pgbouncer=True)`` makes the layer's)."""
    if PGBOUNCER and make_url(url).get_driver_name() == "asyncpg":
        connect_args = {"statement_cache_size": 0, "prepared_statement_cache_size": 0}
        options["connect_args"] = {**connect_args, **options.get("connect_args", {})}
    return create_async_engine(url, **options)


@asynccontextmanager
async def scratch_postgres_database(url: str, suffix: str) -> AsyncIterator[str]:
    """A fresh, empty ``<database>_<suffix>`` on the server of ``url``, dropped afterwards."""
    parsed = make_url(url)
    name = f"{parsed.database}_{suffix}"
    admin = plain_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            await connection.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield parsed.set(database=name).render_as_string(hide_password=False)
        finally:
            async with admin.connect() as connection:
                await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await admin.dispose()
