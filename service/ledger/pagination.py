"""Opaque keyset cursors: a page continues after the last id it showed, never at an offset."""

from __future__ import annotations

import base64
import binascii
from typing import Any, TypeVar

from service.db import Model, Query
from service.errors import ApiError

_Row = TypeVar("_Row", bound=Model)
MAX_ID = 2**31 - 1
"""The largest id a cursor may name: PostgreSQL's INTEGER ids stop there (SQLite's at 2^63 - 1)."""


async def keyset_page(query: Query[_Row], limit: int) -> tuple[list[_Row], str | None]:
    """Up to ``limit`` rows of ``query`` (ordered by ``id``), and the next page's cursor if any."""
    rows = await query.limit(limit + 1).all()
    page = rows[:limit]
    last: Any = page[-1] if page else None
    return page, encode_cursor(last.id) if len(rows) > limit else None


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"id:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, _, value = text.partition(":")
        if prefix != "id" or not value.isascii() or not value.isdigit() or len(value) > 10:
            raise ValueError(text)
        last_id = int(value)
        if last_id > MAX_ID:  # no such row can exist; the database would refuse the number
            raise ValueError(text)
        return last_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ApiError(
            422,
            "validation_error",
            "Invalid fields: cursor",
            [{"field": "cursor", "message": "not a cursor this API gave out"}],
        ) from None
