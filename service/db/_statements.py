"""What a SQL string does, as far as the layer needs to know: read, or write."""

from __future__ import annotations

import re

__all__ = ["writes"]

_READING = re.compile(
    r"\s*(SELECT|WITH|VALUES|TABLE|SHOW|EXPLAIN|SAVEPOINT|RELEASE|ROLLBACK)\b", re.IGNORECASE
)
_MODIFYING_CTE = re.compile(r"\s*WITH\b.*\b(INSERT|UPDATE|DELETE|MERGE)\b", re.I | re.S)
_LOCKING = re.compile(r"\bFOR\s+(UPDATE|SHARE|NO\s+KEY\s+UPDATE|KEY\s+SHARE)\b", re.I)


def writes(sql: str) -> bool:
    """Whether ``sql`` may write or lock rows: anything but a plain read is taken to."""
    return not _READING.match(sql) or bool(_MODIFYING_CTE.match(sql) or _LOCKING.search(sql))
