"""Housekeeping jobs of the ledger."""

from __future__ import annotations

import logging

from sqlalchemy import delete

from service.db import session
from service.jobs import job
from service.ledger.idempotency import KEY_LIFETIME
from service.ledger.models import IdempotencyKey, utcnow

logger = logging.getLogger(__name__)


@job()
async def prune_idempotency_keys() -> None:
    """Delete the idempotency keys older than 24 hours, which are treated as absent anyway.

    Meant to run periodically (hourly); idempotent, and one indexed DELETE.
    """
    result = await session.execute(
        delete(IdempotencyKey).where(IdempotencyKey.created_at <= utcnow() - KEY_LIFETIME)
    )
    logger.info("pruned %d expired idempotency keys", result.rowcount)  # type: ignore[attr-defined]
