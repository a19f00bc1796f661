"""``Idempotency-Key``: a repeat replays the first successful answer and has no second effect.

The key is claimed by inserting its row in the request's own transaction, before
the work: a concurrent repeat then waits on that row (PostgreSQL) or on the
write lock (SQLite), and finds the committed answer once the first is done.
A request that failed wrote nothing, its claim included, so a repeat is a new try.
A key is remembered for 24 hours (``KEY_LIFETIME``): an older one is treated as absent,
and ``prune_idempotency_keys``, a job, deletes them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from pydantic import BaseModel
from quart import request
from sqlalchemy.exc import IntegrityError

from service.errors import ApiError
from service.ledger.models import IdempotencyKey, utcnow

KEY_LIFETIME = timedelta(hours=24)

Answer = BaseModel | dict[str, Any]
Work = Callable[[], Awaitable[tuple[BaseModel, int]]]


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
    stored = await IdempotencyKey.get((user_id, key))
    if stored is not None and stored.created_at <= utcnow() - KEY_LIFETIME:
        await stored.delete()  # expired: as if it had never been used
        stored = None
    if stored is not None:
        return _replay(stored, fingerprint)
    claim = IdempotencyKey(
        user_id=user_id, key=key, request_hash=fingerprint, status_code=0, response_body=""
    )
    try:
        await claim.save()
    except IntegrityError:
        # A concurrent repeat committed first; our session was rolled back.
        stored = await IdempotencyKey.get((user_id, key))
        if stored is None:
            raise
        return _replay(stored, fingerprint)
    body, status = await work()
    await claim.update(status_code=status, response_body=body.model_dump_json())
    return body, status, {}


async def _fingerprint() -> str:
    body = await request.get_json()
    canonical = json.dumps([request.method, request.path, body], sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _replay(stored: IdempotencyKey, fingerprint: str) -> tuple[Answer, int, dict[str, str]]:
    if stored.request_hash != fingerprint:
        raise ApiError(
            422,
            "idempotency_key_reused",
            "This Idempotency-Key was used for a different request.",
        )
    body: dict[str, Any] = json.loads(stored.response_body)
    return body, stored.status_code, {"Idempotent-Replayed": "true"}
