"""``Idempotency-Key``: a repeat replays the first successful answer and has no second effect.

The key is claimed by inserting its row in the request's own transaction, before
the work: a concurrent repeat then waits on that row (PostgreSQL) or on the
write lock (SQLite), and finds the committed answer once the first is done.
A request that failed wrote nothing, its claim included, so a repeat is a new try.
A key is remembered for 24 hours (``KEY_LIFETIME``): an older one is treated as absent,
and ``prune_idempotency_keys``, a job, deletes them.

An expired row is replaced by a DELETE conditioned on its still being expired, never
by its primary key alone: concurrent repeats of an expired key all see the old row, and
the first to delete it claims the key afresh. A later one's DELETE waits for that claim
(PostgreSQL's row lock), then matches nothing, for the row that now holds the key is
fresh; its INSERT fails on the key, and it replays the claim's answer. Deleting by
primary key alone would delete that fresh, committed claim and do the work again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, nullcontext
from datetime import timedelta
from decimal import Decimal
from typing import Any

from pydantic import BaseModel
from quart import request
from sqlalchemy import Row, Table, bindparam, delete, select
from sqlalchemy.exc import IntegrityError

from service.db import session, unit_of_work
from service.errors import ApiError
from service.ledger.models import IdempotencyKey, utcnow

KEY_LIFETIME = timedelta(hours=24)

Answer = BaseModel | dict[str, Any]
Work = Callable[[], Awaitable[tuple[BaseModel, int]]]

_KEYS: Table = IdempotencyKey.__table__  # type: ignore[assignment]
_THIS_KEY = (_KEYS.c.user_id == bindparam("user_id"), _KEYS.c.key == bindparam("key"))
_STORED = select(_KEYS).where(*_THIS_KEY)
_DELETE_IF_EXPIRED = delete(_KEYS).where(*_THIS_KEY, _KEYS.c.created_at <= bindparam("cutoff"))


async def idempotent(user_id: int, work: Work) -> tuple[Answer, int, dict[str, str]]:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        body, status = await work()
        return body, status, {}
    if not 1 <= len(key) <= 255:
        raise ApiError(
            422,
            "validation_error",
            "Invalid fields: Idempotency-Key",
            [{"field": "Idempotency-Key", "message": "must be 1 to 255 characters"}],
        )
    fingerprint = await _fingerprint()
    this_key = {"user_id": user_id, "key": key}
    stored = await _stored(this_key)
    cutoff = utcnow() - KEY_LIFETIME
    # The claim's INSERT may lose to a concurrent repeat's. Nothing was written before it,
    # unless an expired row was just deleted: then in a savepoint of its own, so that its
    # failure undoes the claim only (a unit whose writes a failure rolled back cannot
    # answer 2xx), and the replay below can stand.
    claiming: AbstractAsyncContextManager[None] = nullcontext()
    if stored is not None and stored.created_at <= cutoff:
        # Expired: as if it had never been used. Only while it is still expired (see above).
        await session.execute(_DELETE_IF_EXPIRED, {**this_key, "cutoff": cutoff})
        claiming = unit_of_work()
        stored = None
    if stored is not None:
        return _replay(stored, fingerprint)
    claim = IdempotencyKey(
        user_id=user_id, key=key, request_hash=fingerprint, status_code=0, response_body=""
    )
    try:
        async with claiming:
            await claim.save()
    except IntegrityError:
        # A concurrent repeat committed first; our claim (or all we did) was rolled back.
        stored = await _stored(this_key)
        if stored is None:
            raise
        return _replay(stored, fingerprint)
    body, status = await work()
    await claim.update(status_code=status, response_body=body.model_dump_json())
    return body, status, {}


async def _stored(this_key: dict[str, Any]) -> Row[Any] | None:
    found: Row[Any] | None = (await session.execute(_STORED, this_key)).one_or_none()
    return found


async def _fingerprint() -> str:
    body = await request.get_json()
    canonical = json.dumps([request.method, request.path, body], sort_keys=True, default=_number)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _number(value: object) -> object:
    """A number the body's parser kept exact (a ``Decimal``): ``100.0`` is the same as 100."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else str(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def _replay(stored: Row[Any], fingerprint: str) -> tuple[Answer, int, dict[str, str]]:
    if stored.request_hash != fingerprint:
        raise ApiError(
            422,
            "idempotency_key_reused",
            "This Idempotency-Key was used for a different request.",
        )
    body: dict[str, Any] = json.loads(stored.response_body)
    return body, stored.status_code, {"Idempotent-Replayed": "true"}
