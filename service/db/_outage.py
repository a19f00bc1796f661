"""Which database errors mean "the database cannot be reached or used right now".

Only those answer 503 (retry later): the database cannot be opened or
connected to, the connection was lost, a timeout, no pooled connection in time,
or SQLite's write lock not obtained within its busy timeout. Anything else
(a missing table, a syntax error, a constraint) is a bug or a conflict, and
retrying it would only repeat it.
"""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

__all__ = ["OUTAGE_ERRORS", "is_outage"]

# SQLSTATE prefixes: connection exception (class 08), insufficient resources (53: too many
# connections, out of memory or disk), administrator or crash shutdown, "the database system
# is starting up", and a statement cancelled by its timeout.
_SQLSTATES = ("08", "53", "57P01", "57P02", "57P03", "57014")
# SQLite's primary result codes for the same: BUSY (the write lock not obtained within the
# busy timeout), LOCKED, IOERR, FULL, CANTOPEN and PROTOCOL (a locking race it gave up on).
# "no such table" or a syntax error is SQLITE_ERROR (1): a bug, not an outage.
_SQLITE_CODES = frozenset({5, 6, 10, 13, 14, 15})


def _driver_errors() -> tuple[type[Exception], ...]:
    # A driver's own errors can escape unwrapped (asyncpg's while it connects).
    try:
        import asyncpg
    except ImportError:  # pragma: no cover - asyncpg is optional for the layer
        return ()
    return (asyncpg.PostgresError, asyncpg.InterfaceError)


OUTAGE_ERRORS: tuple[type[Exception], ...] = (
    DBAPIError,
    PoolTimeoutError,
    OSError,
    *_driver_errors(),
)
"""The exception classes an outage can arrive as, to register error handlers for.

``OSError`` covers a refused or reset connection and ``TimeoutError`` (a connect or
statement timeout); ``is_outage`` decides on each instance.
"""


def is_outage(error: BaseException) -> bool:
    """Whether ``error`` (or what it wraps) means the database cannot be reached or used."""
    if isinstance(error, PoolTimeoutError):
        return True
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, OSError):
            return True
        sqlstate = getattr(cause, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate.startswith(_SQLSTATES):
            return True
        code = getattr(cause, "sqlite_errorcode", None)
        if isinstance(code, int) and code & 0xFF in _SQLITE_CODES:
            return True
        cause = cause.__cause__
    return False
