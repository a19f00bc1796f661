"""Opaque keyset cursors: a page continues after the last id it showed, never at an offset."""

from __future__ import annotations

import base64
import binascii

from service.errors import ApiError


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"id:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, _, value = text.partition(":")
        if prefix != "id" or not value.isdigit():
            raise ValueError(text)
        return int(value)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ApiError(
            422,
            "validation_error",
            "Invalid fields: cursor",
            [{"field": "cursor", "message": "not a cursor this API gave out"}],
        ) from None
