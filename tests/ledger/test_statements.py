"""Statements: 202 at once, figures computed by a job that runs only after the commit.

The plugin runs jobs eagerly (after the request's commit, in its task), so a
statement is ready when the request that asked for it returns.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from quart.typing import TestClientProtocol as Client
from sqlalchemy import Engine, event, func, make_url, select
from sqlalchemy.ext.asyncio import AsyncConnection

from service.db import unit_of_work
from service.ledger import statements
from service.ledger.models import Account, Entry, Statement, utcnow
from service.testing import CaptureOnCommit
from tests.ledger.conftest import Api, Caller


async def _post_entries(account_id: int, *dated: tuple[str, int]) -> None:
    """Entries at given days (``YYYY-MM-DD``), with the running balance, as the API would."""
    async with unit_of_work():
        account = await Account.get(account_id)
        assert account is not None
        for day, amount in dated:
            account.balance += amount
            await Entry(
                account_id=account_id,
                amount=amount,
                balance_after=account.balance,
                kind="deposit" if amount > 0 else "withdrawal",
                created_at=datetime.fromisoformat(day).replace(hour=12, tzinfo=UTC),
            ).save()


async def _ask(api: Api, caller: Caller, account_id: int, **period: str) -> Any:
    return await api.client.post(
        f"/accounts/{account_id}/statements", json=period, headers=caller.headers
    )


async def test_a_statement_is_accepted_then_computed_after_the_commit(
    api: Api, service_client: Client
) -> None:
    ada = await api.user()
    account = await api.account(ada)
    await _post_entries(
        account,
        ("2026-01-15", 1000),  # before the period: the opening balance
        ("2026-02-01", 500),
        ("2026-02-10", -300),
        ("2026-02-28", 40),
        ("2026-03-01", 7),  # after it
    )

    response = await _ask(api, ada, account, **{"from": "2026-02-01", "to": "2026-02-28"})

    assert response.status_code == 202
    accepted = await response.get_json()
    assert (accepted["status"], accepted["from"], accepted["to"]) == (
        "pending",
        "2026-02-01",
        "2026-02-28",
    )
    ready = await service_client.get(f"/statements/{accepted['id']}", headers=ada.headers)
    assert ready.status_code == 200
    body = await ready.get_json()
    assert {key: body[key] for key in ("status", "opening_balance", "closing_balance")} == {
        "status": "ready",
        "opening_balance": 1000,
        "closing_balance": 1240,
    }
    assert (body["total_in"], body["total_out"], body["entry_count"]) == (540, 300, 3)


async def test_an_empty_period_before_any_entry_is_all_zeros(
    api: Api, service_client: Client
) -> None:
    ada = await api.user()
    account = await api.account(ada)
    response = await _ask(api, ada, account, **{"from": "2000-01-01", "to": "2000-01-01"})
    body = await (
        await service_client.get(
            f"/statements/{(await response.get_json())['id']}", headers=ada.headers
        )
    ).get_json()
    assert [body[key] for key in ("opening_balance", "closing_balance", "entry_count")] == [0, 0, 0]


@pytest.mark.parametrize(
    ("period", "field"),
    [
        ({"from": "2026-02-02", "to": "2026-02-01"}, "body"),
        ({"from": "2026-02-30", "to": "2026-03-01"}, "from"),
        ({"from": "2026-02-01"}, "to"),
        ({"from": "2026-02-01", "to": "2026-02-02", "extra": 1}, "extra"),
        ({"from": "2026-02-01", "to": "9999-12-31"}, "to"),
    ],
)
async def test_a_bad_period_is_a_422_naming_the_field(
    api: Api, period: dict[str, Any], field: str
) -> None:
    ada = await api.user()
    account = await api.account(ada)
    response = await _ask(api, ada, account, **period)
    assert response.status_code == 422
    error = (await response.get_json())["error"]
    assert error["code"] == "validation_error"
    assert field in [detail["field"] for detail in error["details"]]


async def test_another_users_statements_and_accounts_are_not_found(
    api: Api, service_client: Client
) -> None:
    ada, bob = await api.user(), await api.user("Bob")
    account = await api.account(ada)
    mine = await (
        await _ask(api, ada, account, **{"from": "2026-01-01", "to": "2026-01-31"})
    ).get_json()

    theirs = await service_client.get(f"/statements/{mine['id']}", headers=bob.headers)
    into = await _ask(api, bob, account, **{"from": "2026-01-01", "to": "2026-01-31"})
    nothing = await service_client.get("/statements/999999999999", headers=ada.headers)

    assert [r.status_code for r in (theirs, into, nothing)] == [404, 404, 404]
    assert (await theirs.get_json())["error"]["code"] == "not_found"


async def test_a_rolled_back_request_enqueues_nothing(
    api: Api,
    service_on_commit: CaptureOnCommit,
    service_connection: AsyncConnection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ada = await api.user()
    account = await api.account(ada)
    period = {"from": "2026-01-01", "to": "2026-01-31"}

    def fail_after_enqueueing(statement: Statement) -> Any:
        raise RuntimeError("the response could not be made")

    with service_on_commit() as accepted:
        assert (await _ask(api, ada, account, **period)).status_code == 202
    monkeypatch.setattr("service.ledger.api.statement_out", fail_after_enqueueing)
    with service_on_commit() as rolled_back, pytest.raises(RuntimeError, match="response"):
        await _ask(api, ada, account, **period)  # the handler's exception reaches the test

    assert (len(accepted), len(rolled_back)) == (1, 0)
    count = await service_connection.scalar(select(func.count()).select_from(Statement))
    assert count == 1  # the accepted one only: the failed request wrote nothing


async def test_a_failing_job_leaves_no_partial_writes_and_marks_the_statement_failed(
    api: Api, service_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    ada = await api.user()
    account = await api.account(ada)
    await _post_entries(account, ("2026-01-10", 100))
    write = Statement.update

    async def write_then_fail(self: Statement, **values: Any) -> Statement:
        await write(self, **values)  # flushed: the figures are in the job's transaction
        if values.get("status") == "ready":
            raise RuntimeError("the job died after writing")
        return self

    monkeypatch.setattr(Statement, "update", write_then_fail)

    response = await _ask(api, ada, account, **{"from": "2026-01-01", "to": "2026-01-31"})

    body = await (
        await service_client.get(
            f"/statements/{(await response.get_json())['id']}", headers=ada.headers
        )
    ).get_json()
    assert body["status"] == "failed"
    assert body["failure_reason"] == "The statement could not be computed."
    assert [body[key] for key in ("opening_balance", "total_in", "entry_count")] == [None] * 3


async def test_a_job_runs_on_a_statement_once(api: Api, service_client: Client) -> None:
    ada = await api.user()
    account = await api.account(ada)
    response = await _ask(api, ada, account, **{"from": "2026-01-01", "to": "2026-01-31"})
    statement_id = (await response.get_json())["id"]
    await _post_entries(account, ("2026-01-10", 100))

    await unit_of_work()(statements.compute_statement)(statement_id)  # delivered again

    body = await (
        await service_client.get(f"/statements/{statement_id}", headers=ada.headers)
    ).get_json()
    assert body["entry_count"] == 0  # computed once, before the late entry; not recomputed


@pytest.mark.parametrize("to", [timedelta(0), timedelta(days=1), "2099-12-31"])
async def test_a_period_that_has_not_ended_is_refused(
    api: Api, service_connection: AsyncConnection, to: timedelta | str
) -> None:
    # "Ready" at once for a period to 2099, and a later deposit inside it never showed.
    ada = await api.user()
    account = await api.account(ada)
    end = to if isinstance(to, str) else (utcnow().date() + to).isoformat()

    response = await _ask(api, ada, account, **{"from": "2026-01-01", "to": end})

    error = (await response.get_json())["error"]
    assert (response.status_code, error["code"]) == (422, "period_not_ended")
    assert end in error["message"]
    count = await service_connection.scalar(select(func.count()).select_from(Statement))
    assert count == 0


async def test_a_period_that_ended_yesterday_is_accepted(api: Api) -> None:
    ada = await api.user()
    account = await api.account(ada)
    yesterday = (utcnow().date() - timedelta(days=1)).isoformat()
    response = await _ask(api, ada, account, **{"from": yesterday, "to": yesterday})
    assert response.status_code == 202


def _write_lock_free(database: Path) -> bool:
    """Whether another connection could take SQLite's write lock at this moment."""
    probe = sqlite3.connect(database, timeout=0, isolation_level=None)
    try:
        probe.execute("BEGIN IMMEDIATE")
        probe.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError as error:
        assert "locked" in str(error)
        return False
    finally:
        probe.close()


@pytest.mark.service_committing
async def test_the_figures_are_read_without_holding_the_write_lock(
    api: Api, service_database_url: str
) -> None:
    # SQLite, 400k entries: each statement scanned them inside the job's write transaction
    # (the database's one write lock), 0.25 s each; lease renewals and deposits waited.
    url = make_url(service_database_url)
    if url.get_backend_name() != "sqlite":
        pytest.skip("SQLite's write lock; PostgreSQL's reads take no lock")
    assert url.database is not None
    ada = await api.user()
    account = await api.account(ada)
    await _post_entries(account, ("2026-01-10", 100), ("2026-01-20", -40))
    free_while_reading: list[bool] = []

    def probe(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "FROM entries" in statement:
            free_while_reading.append(_write_lock_free(Path(url.database or "")))

    event.listen(Engine, "before_cursor_execute", probe)
    try:
        response = await _ask(api, ada, account, **{"from": "2026-01-01", "to": "2026-01-31"})
    finally:
        event.remove(Engine, "before_cursor_execute", probe)

    statement = await api.client.get(
        f"/statements/{(await response.get_json())['id']}", headers=ada.headers
    )
    assert (await statement.get_json())["total_in"] == 100
    assert free_while_reading and all(free_while_reading), free_while_reading
