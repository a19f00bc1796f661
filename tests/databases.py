"""Databases of a test's own, next to the suite's: for runs that drop or rebuild everything.

And plain engines (none of the layer's doing) that work through PgBouncer in transaction
mode when the run goes through one (``make test-pgbouncer`` sets ``DATABASE_PGBOUNCER``).
"""

from __future__ import annotations

import os
from contextlib import AbstractAsyncContextManager
from typing import Any

from sqlalchemy import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from service.db.testing import test_database

PGBOUNCER = os.environ.get("DATABASE_PGBOUNCER", "").lower() in ("1", "true", "yes", "on")
"""The run goes through PgBouncer in transaction mode: no statement may stay prepared."""


def plain_engine(url: str | URL, **options: Any) -> AsyncEngine:
    """``create_async_engine(url, **options)``, its statements unnamed and uncached through
    PgBouncer (as ``make_engine(pgbouncer=True)`` makes the layer's)."""
    if PGBOUNCER and make_url(url).get_driver_name() == "asyncpg":
        connect_args = {"statement_cache_size": 0, "prepared_statement_cache_size": 0}
        options["connect_args"] = {**connect_args, **options.get("connect_args", {})}
    return create_async_engine(url, **options)


def scratch_postgres_database(url: str, suffix: str) -> AbstractAsyncContextManager[str]:
    """A fresh, empty ``<suffix>_<database>`` on the server of ``url``, dropped afterwards (the
    plugin's own ``test_database``, under another prefix)."""
    if make_url(url).get_backend_name() != "postgresql":
        raise ValueError(f"a scratch PostgreSQL database needs a PostgreSQL URL, not {url!r}")
    return test_database(url, prefix=f"{suffix}_")
