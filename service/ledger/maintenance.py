"""Housekeeping jobs of the ledger."""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import delete

from service.db import session
from service.jobs import job
from service.ledger.idempotency import KEY_LIFETIME
from service.ledger.models import IdempotencyKey, utcnow

logger = logging.getLogger(__name__)


@job(every=timedelta(hours=1))
async def prune_idempotency_keys() -> None:
    """Delete the idempotency keys older than 24 hours, which are treated as absent anyway.

    Hourly, at most one instance pending across every process and host (a periodic
    job of ``service.jobs``); idempotent, and one indexed DELETE.
    """
    result = await session.execute(
        delete(IdempotencyKey).where(IdempotencyKey.created_at <= utcnow() - KEY_LIFETIME)
    )
    logger.info("pruned %d expired idempotency keys", result.rowcount)  # type: ignore[attr-defined]
