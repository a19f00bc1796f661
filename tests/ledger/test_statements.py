"""Statements: 202 at once, figures computed by a job that runs only after the commit.

The plugin runs jobs eagerly (after the request's commit, in its task), so a
statement is ready when the request that asked for it returns.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from quart.typing import TestClientProtocol as Client
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from service.db import unit_of_work
from service.ledger import statements
from service.ledger.models import Account, Entry, Statement
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
