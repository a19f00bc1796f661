"""Database servers (PostgreSQL): a pooled connection checked only when it may have gone stale.

A server can drop connections (a restart, a failover, an idle timeout), so a
pooled connection is checked before use. SQLAlchemy's ``pool_pre_ping`` checks
every checkout, and with asyncpg that check is three round trips (BEGIN, a
query, ROLLBACK): more than a typical request's own statements. As HikariCP
does, a connection returned to the pool within the last ``PING_AFTER`` seconds
is trusted as it is; an older one is checked with one round trip, and replaced
if the check fails. A connection that died within the window fails its request
with a 503, and the pool then replaces every connection older than the failure.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.util import await_

__all__ = ["PINGED", "PING_AFTER", "ping_when_idle"]

PING_AFTER = 0.5
"""Seconds a pooled connection may have been idle and still be used without a check."""

_RETURNED = "service.db.returned_at"
PINGED = "service.db.pinged"
"""Set in the pool record's ``info`` by a checkout that checked the connection (for counters)."""


def ping_when_idle(engine: AsyncEngine) -> None:
    """Check an asyncpg connection at checkout only if it was idle for over ``PING_AFTER``."""
    event.listen(engine.sync_engine, "checkin", _returned)
    event.listen(engine.sync_engine, "checkout", _checked_out)


def _returned(dbapi_connection: DBAPIConnection | None, record: ConnectionPoolEntry) -> None:
    record.info[_RETURNED] = time.monotonic()


def _checked_out(
    dbapi_connection: DBAPIConnection, record: ConnectionPoolEntry, proxy: Any
) -> None:
    returned = record.info.get(_RETURNED)
    if returned is None or time.monotonic() - returned < PING_AFTER:
        return  # just connected, or in use a moment ago
    driver = dbapi_connection.driver_connection
    record.info[PINGED] = True
    try:
        await_(driver.execute("SELECT 1"))  # one round trip: the simple query protocol
    except Exception as error:
        # The pool discards this connection and checks out another (or connects anew).
        raise DisconnectionError(f"a pooled connection failed its check: {error!r}") from error
