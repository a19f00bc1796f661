"""Engines, with SQLite made fit to be the embedded default; and the default engine of scripts."""

from __future__ import annotations

import asyncio
import os
import weakref
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import URL, event, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from service.db import _events
from service.db import _server as server
from service.db import _sqlite as sqlite
from service.db._context import Bind
from service.db._pool import MeasuredPool

__all__ = [
    "CONFIG_OPTIONS",
    "autocommits",
    "default_engine",
    "engine_for_loop",
    "engine_options",
    "make_engine",
    "readonly_bind",
]


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


CONFIG_OPTIONS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "DATABASE_CONNECT_TIMEOUT": ("connect_timeout", float),
    "DATABASE_COMMAND_TIMEOUT": ("command_timeout", float),
    "DATABASE_POOL_TIMEOUT": ("pool_timeout", float),
    "DATABASE_POOL_SIZE": ("pool_size", int),
    "DATABASE_MAX_OVERFLOW": ("max_overflow", int),
    "DATABASE_PGBOUNCER": ("pgbouncer", _flag),
}
"""Configuration keys (app config or environment) and the ``make_engine()`` option of each."""


_readonly: weakref.WeakKeyDictionary[AsyncEngine, AsyncEngine] = weakref.WeakKeyDictionary()


def readonly_bind(bind: Bind | None) -> Bind | None:
    """The bind a read-only unit's session uses: the engine as read-only units use it.

    On PostgreSQL in autocommit (no BEGIN, no COMMIT: asyncpg switches without a round
    trip); on SQLite with transactions that begin DEFERRED (``_sqlite.READ_ONLY``). Both
    share the engine's pool.
    """
    if not isinstance(bind, AsyncEngine):
        return bind
    found = _readonly.get(bind)
    if found is None:
        if bind.dialect.name == "postgresql":
            found = bind.execution_options(isolation_level="AUTOCOMMIT")
        elif bind.dialect.name == "sqlite":
            found = bind.execution_options(**{sqlite.READ_ONLY: True})
        else:
            found = bind
        _readonly[bind] = found
    return found


def autocommits(bind: object) -> bool:
    """Whether ``bind`` is a PostgreSQL engine in autocommit, as ``readonly_bind``'s are."""
    return (
        isinstance(bind, AsyncEngine)
        and bind.dialect.name == "postgresql"
        and bind.get_execution_options().get("isolation_level") == "AUTOCOMMIT"
    )


def engine_options(config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``make_engine()`` options that ``config`` (an app's config, the environment) sets."""
    return {
        option: convert(config[key])
        for key, (option, convert) in CONFIG_OPTIONS.items()
        if config.get(key) not in (None, "")
    }


def make_engine(
    url: str | URL,
    *,
    connect_timeout: float | None = None,
    command_timeout: float | None = None,
    pgbouncer: bool | None = None,
    **options: Any,
) -> AsyncEngine:
    """Create an async engine for ``url``; ``options`` go to ``create_async_engine``.

    Call it when serving starts, never at import: an engine belongs to the
    event loop it was first used on. A SQLite file URL gets its directory
    created, foreign keys enforced, WAL, a busy timeout and a BEGIN of the
    layer's own, which queues the process's writers fairly (``_sqlite``).

    A database server is one that can go away. A pooled connection idle for
    more than half a second is checked before use (``_server``), so one the
    server dropped is replaced instead of failing a request; and with asyncpg, ``connect_timeout``
    and ``command_timeout`` (seconds) bound how long a connection attempt and a
    statement may take, so that a database that does not answer fails the
    request instead of hanging it. SQLite has neither: it waits for its write
    lock by its busy timeout.

    ``pgbouncer=True`` (by default, the ``DATABASE_PGBOUNCER`` environment variable: every
    engine of a process that reaches PostgreSQL through PgBouncer needs it, the app's, its
    scripts', its tests'): the URL is a PgBouncer in transaction mode, where
    consecutive transactions of one connection may run on different server
    connections, so a statement prepared in one may be missing (or taken, under
    the same name) in the next. Statements are then prepared unnamed, in the
    exchange that runs them, and never cached (asyncpg's ``statement_cache_size=0``,
    SQLAlchemy's ``prepared_statement_cache_size=0``): a round trip more per
    statement, the price PgBouncer before 1.21 asks.
    """
    url = make_url(url)
    options.setdefault("poolclass", MeasuredPool)  # SQLAlchemy's, publishing events
    if url.get_backend_name() != "sqlite":
        if url.get_driver_name() != "asyncpg":
            options.setdefault("pool_pre_ping", True)
            return _published(create_async_engine(url, **options))
        timeouts = {"timeout": connect_timeout, "command_timeout": command_timeout}
        connect_args: dict[str, Any] = {
            name: value for name, value in timeouts.items() if value is not None
        }
        if _flag(os.environ.get("DATABASE_PGBOUNCER", "")) if pgbouncer is None else pgbouncer:
            connect_args.update(statement_cache_size=0, prepared_statement_cache_size=0)
        options["connect_args"] = {**connect_args, **options.get("connect_args", {})}
        engine = create_async_engine(url, **options)
        if not options.get("pool_pre_ping"):
            server.ping_when_idle(engine)
        return _published(engine)
    if not url.database or url.database == ":memory:" or url.database.startswith("file:"):
        raise ValueError(
            f"{url!r}: use a SQLite file such as sqlite+aiosqlite:///var/service.db. An in-memory "
            "database is one shared connection, where one task's rollback discards another's work."
        )
    Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url, async_creator=sqlite.connector(url.database), **options)
    event.listen(engine.sync_engine, "begin", sqlite.begin)
    event.listen(engine.sync_engine, "invalidate", sqlite.invalidate)
    return _published(engine)


def _published(engine: AsyncEngine) -> AsyncEngine:
    """Its statements' errors noted for the outcome of their unit of work (``_events``)."""
    event.listen(engine.sync_engine, "handle_error", _events.handle_error)
    return engine


# Engines made for units of work outside serving (scripts, CLI commands), one per event loop
# and URL, each disposed when its loop shuts down.
_per_loop: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[str, tuple[AsyncEngine, AsyncIterator[None]]]
] = weakref.WeakKeyDictionary()


async def engine_for_loop(url: str | URL, **options: Any) -> AsyncEngine:
    """The running loop's engine on ``url``, made now if need be, disposed at the loop's end.

    It is disposed when the loop shuts down (``asyncio.run`` finalizes the loop's
    async generators before closing it), while its connections can still be
    closed properly.
    """
    made = _per_loop.setdefault(asyncio.get_running_loop(), {})
    key = str(url)
    found = made.get(key)
    if found is not None:
        return found[0]
    engine = make_engine(url, **options)
    lifetime = _disposed_at_shutdown(engine)
    await anext(lifetime)  # registered with the loop's async-generator hooks from here on
    made[key] = (engine, lifetime)
    return engine


async def default_engine() -> AsyncEngine | None:
    """The running loop's engine on ``DATABASE_URL`` (made now if need be), or ``None`` if unset."""
    url = os.environ.get("DATABASE_URL")
    if not url:
        return None
    return await engine_for_loop(url, **engine_options(os.environ))


async def _disposed_at_shutdown(engine: AsyncEngine) -> AsyncIterator[None]:
    try:
        yield
    finally:
        await engine.dispose()
