"""Alembic migrations, run with an async engine from the same ``DATABASE_URL`` as the app."""

from __future__ import annotations

import asyncio
from logging.config import fileConfig
from typing import Any

from sqlalchemy import TypeDecorator, event, pool
from sqlalchemy.engine import Connection

from alembic import context
from service import modules
from service.config import Settings
from service.db import Model, make_engine

config = context.config

if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

modules.load()  # every model module (service/modules.py), so that autogenerate sees them all
target_metadata = Model.metadata


def _database_url() -> str:
    url: str | None = config.attributes.get("database_url")
    return url or Settings().database_url


def _render_item(kind: str, obj: Any, autogen_context: Any) -> str | bool:
    """Render a column type of the project's own (``UTCDateTime``) with its import.

    Alembic would write its full module path without importing it. The layer's
    types are imported from ``service.db``, where they are public.
    """
    if kind != "type" or not isinstance(obj, TypeDecorator):
        return False
    cls = type(obj)
    module = "service.db" if cls.__module__.startswith("service.db.") else cls.__module__
    if module.startswith("sqlalchemy"):
        return False
    autogen_context.imports.add(f"from {module} import {cls.__name__}")
    return repr(obj)


def _configure(**options: Any) -> None:
    context.configure(
        target_metadata=target_metadata,
        render_as_batch=_database_url().startswith("sqlite"),  # SQLite cannot ALTER most things
        compare_type=True,
        transactional_ddl=True,  # SQLite too: the engine takes over BEGIN
        render_item=_render_item,
        **options,
    )


def run_migrations_offline() -> None:
    _configure(url=_database_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def _run_migrations(connection: Connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()
        if connection.dialect.name == "sqlite":
            # Foreign keys are off during migrations (below), so check them at the end.
            broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
            if broken:
                raise RuntimeError(f"the migration broke foreign keys: {broken}")


def _foreign_keys_off(connection: Any, record: Any) -> None:
    # SQLite rebuilds a table to alter it ("batch" mode): dropping the old one
    # with foreign keys on would cascade to, or fail on, the rows referring to it.
    cursor = connection.cursor()
    cursor.execute("PRAGMA foreign_keys = OFF")
    cursor.close()


async def run_migrations_online() -> None:
    pgbouncer = Settings().database_pgbouncer  # DATABASE_PGBOUNCER, as the app's engine
    engine = make_engine(_database_url(), poolclass=pool.NullPool, pgbouncer=pgbouncer)
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", _foreign_keys_off)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run_migrations)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(run_migrations_online())
