"""Statements: requested by the API, computed by a job once the request has committed.

A statement is of a period that has ended (``to`` before today, UTC): its entries can
no longer change, so its figures, once computed, stay true. The job reads them in a
read-only unit of work of their own, so that on SQLite no scan of an account's entries
holds the write lock; only the statement's row is then written, in a short one.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.exc import DBAPIError

from service.db import session, unit_of_work
from service.errors import ApiError
from service.jobs import enqueue, job
from service.ledger.models import Entry, Statement, utcnow
from service.ledger.schemas import StatementOut

logger = logging.getLogger(__name__)


async def request_statement(user_id: int, account_id: int, start: date, end: date) -> Statement:
    """A pending statement, computed by a job after the commit (never if the request fails).

    422 ``period_not_ended`` unless the period has ended: a later entry inside it would
    never show in figures computed before.
    """
    today = utcnow().date()
    if end >= today:
        raise ApiError(
            422,
            "period_not_ended",
            f"The period ends at the end of {end.isoformat()} (UTC): ask for its statement "
            f"from {(end + timedelta(days=1)).isoformat()} on.",
        )
    statement = await Statement.create(
        user_id=user_id, account_id=account_id, period_start=start, period_end=end
    )
    enqueue(compute_statement, statement.id)
    return statement


def statement_out(statement: Statement) -> StatementOut:
    return StatementOut.model_validate(
        {
            "from": statement.period_start,
            "to": statement.period_end,
            **{
                name: getattr(statement, name)
                for name in StatementOut.model_fields
                if name not in ("from_", "to")
            },
        }
    )


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), UTC)


async def mark_failed(statement_id: int, *, error: Exception) -> None:
    """The job's failure handler, in a unit of work of its own: the figures stay empty."""
    reason = (
        "The database failed while computing the statement."
        if isinstance(error, DBAPIError)
        else "The statement could not be computed."
    )
    statement = await Statement.get(statement_id)
    if statement is not None and statement.status == "pending":
        await statement.update(status="failed", failure_reason=reason, completed_at=utcnow())


@job(on_failure=mark_failed)
async def compute_statement(statement_id: int) -> None:
    """Opening and closing balances, money in and out, and the number of entries.

    Idempotent: a statement that is no longer pending (a job delivered twice) is left alone.
    """
    # A task of its own for a unit of work of its own, read-only: the job's unit has not
    # used the database yet, so it holds no lock while the entries are read.
    figures = await asyncio.create_task(_figures(statement_id, bind=session.bind))
    statement = await Statement.get(statement_id)
    if statement is None or statement.status != "pending":
        return
    if figures is None:  # the read did not see the pending statement: never leave it pending
        raise RuntimeError(f"statement {statement_id} was not found where its figures were read")
    await statement.update(status="ready", completed_at=utcnow(), **figures)


async def _figures(statement_id: int, *, bind: Any) -> dict[str, int] | None:
    async with unit_of_work(readonly=True, bind=bind):
        statement = await Statement.get(statement_id)
        if statement is None or statement.status != "pending":
            return None
        start = _midnight(statement.period_start)
        end = _midnight(statement.period_end + timedelta(days=1))
        in_account = Entry.account_id == statement.account_id
        opening = await session.scalar(
            select(Entry.balance_after)
            .where(in_account, Entry.created_at < start)
            .order_by(Entry.id.desc())
            .limit(1)
        )
        total_in, total_out, count = (
            await session.execute(
                select(
                    func.coalesce(func.sum(case((Entry.amount > 0, Entry.amount), else_=0)), 0),
                    func.coalesce(func.sum(case((Entry.amount < 0, -Entry.amount), else_=0)), 0),
                    func.count(),
                ).where(in_account, Entry.created_at >= start, Entry.created_at < end)
            )
        ).one()
        opening = opening or 0
        closing = opening + total_in - total_out
        last = await session.scalar(
            select(Entry.balance_after)
            .where(in_account, Entry.created_at < end)
            .order_by(Entry.id.desc())
            .limit(1)
        )
    if (last or 0) != closing:
        raise RuntimeError(f"statement {statement_id}: the entries disagree with the balances")
    return {
        "opening_balance": opening,
        "closing_balance": closing,
        "total_in": total_in,
        "total_out": total_out,
        "entry_count": count,
    }
