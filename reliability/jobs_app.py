"""The service's app, plus statements whose job takes a while: jobs in flight at SIGTERM.

Served by Hypercorn as ``reliability.jobs_app:app``, with the default backend:
jobs run in the serving process's own dispatcher. The job waits ``delay``
seconds, then computes the statement as the real one does.
"""

from __future__ import annotations

import asyncio
from datetime import date

from quart import request
from quart.typing import ResponseReturnValue

from service.app import create_app
from service.jobs import enqueue, job
from service.ledger import statements
from service.ledger.models import Account, Statement

app = create_app()


async def _failed(statement_id: int, delay: float, *, error: Exception) -> None:
    await statements.mark_failed(statement_id, error=error)


@job(on_failure=_failed)
async def slow_statement(statement_id: int, delay: float) -> None:
    await asyncio.sleep(delay)
    await statements.compute_statement(statement_id)


@app.post("/_reliability/accounts/<int:account_id>/slow-statements")
async def ask_for_a_slow_statement(account_id: int) -> ResponseReturnValue:
    delay = float((await request.get_json())["delay"])
    account = await Account.get(account_id)
    if account is None:
        return {"error": "no such account"}, 404
    statement = await Statement.create(
        user_id=account.user_id,
        account_id=account.id,
        period_start=date(2000, 1, 1),
        period_end=date(2999, 12, 31),
    )
    enqueue(slow_statement, statement.id, delay)
    return {"id": statement.id}, 202
