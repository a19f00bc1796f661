"""SQL as far as the layer needs to know it: whether a string reads or writes, and the
server's WAL position as a function a statement can select."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import String
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

__all__ = ["wal_position", "writes"]

_READING = re.compile(
    r"\s*(SELECT|WITH|VALUES|TABLE|SHOW|EXPLAIN|SAVEPOINT|RELEASE|ROLLBACK)\b", re.IGNORECASE
)
_MODIFYING_CTE = re.compile(r"\s*WITH\b.*\b(INSERT|UPDATE|DELETE|MERGE)\b", re.I | re.S)
_LOCKING = re.compile(r"\bFOR\s+(UPDATE|SHARE|NO\s+KEY\s+UPDATE|KEY\s+SHARE)\b", re.I)


def writes(sql: str) -> bool:
    """Whether ``sql`` may write or lock rows: anything but a plain read is taken to."""
    return not _READING.match(sql) or bool(_MODIFYING_CTE.match(sql) or _LOCKING.search(sql))


class wal_position(FunctionElement[str]):  # noqa: N801 - reads as the SQL function it is
    """The server's WAL insert position, as text (PostgreSQL); NULL on other databases.

    In a statement that finds a row another transaction committed (a job's claim,
    say), it is at or past that commit: ``reading_after()`` it, and reads see the
    commit on any server, for no round trip of its own.
    """

    type = String()
    name = "wal_position"
    inherit_cache = True


@compiles(wal_position)
def _no_position(element: wal_position, compiler: SQLCompiler, **kw: Any) -> str:
    return "NULL"


@compiles(wal_position, "postgresql")
def _insert_position(element: wal_position, compiler: SQLCompiler, **kw: Any) -> str:
    return "pg_current_wal_insert_lsn()::text"
