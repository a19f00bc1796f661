"""A read-only unit of work (GET, HEAD, OPTIONS; ``readonly=True``) reads, and nothing else.

On PostgreSQL it runs without a transaction (no BEGIN, no COMMIT), so a write
there would commit at once, whatever the response: every write and row lock is
refused before it is sent, on both databases alike.
"""

from __future__ import annotations

import pytest
from quart import Quart
from sqlalchemy import text

from service.db import UnitOfWorkError, on_commit, session, unit_of_work
from service.db.quart import Database
from service.testing import raise_propagated_errors
from tests.db.conftest import ReadNames, Serve
from tests.db.models import Widget


@pytest.mark.parametrize(
    "write",
    [
        pytest.param(lambda: Widget.create(name="x"), id="save"),
        pytest.param(
            lambda: session.execute(text("INSERT INTO test_widgets (name, size) VALUES ('x', 1)")),
            id="text-insert",
        ),
        pytest.param(
            lambda: session.execute(
                text(
                    "WITH made AS (INSERT INTO test_widgets (name, size) VALUES ('x', 1) "
                    "RETURNING id) SELECT id FROM made"
                )
            ),
            id="modifying-cte",
        ),
        pytest.param(lambda: Widget.query.with_for_update().all(), id="lock"),
    ],
)
async def test_a_read_only_unit_refuses_writes_and_locks(
    write: object, stored_names: ReadNames
) -> None:
    async with unit_of_work():
        await Widget.create(name="existing")

    async with unit_of_work(readonly=True):
        with pytest.raises(UnitOfWorkError, match="read-only"):
            await write()  # type: ignore[operator]
        assert await Widget.query.count() == 1  # and it can still read

    assert await stored_names() == ["existing"]


async def test_reading_is_allowed_in_every_form() -> None:
    async with unit_of_work(readonly=True):
        assert await Widget.query.count() == 0
        assert (await session.execute(text("SELECT count(*) FROM test_widgets"))).scalar() == 0
        assert (
            await session.execute(text("  with w as (select 1 as one) select one from w"))
        ).scalar() == 1


@pytest.mark.service_committing
async def test_a_get_request_that_writes_fails_and_writes_nothing(
    service_database_url: str, serve: Serve, stored_names: ReadNames
) -> None:
    app = Quart(__name__)
    app.config.update(DATABASE_URL=service_database_url, TESTING=True)
    Database(app)
    raise_propagated_errors(app)

    @app.get("/sneaky")
    async def sneaky() -> dict[str, str]:
        await Widget.create(name="written-by-a-get")
        return {}

    client = await serve(app)

    with pytest.raises(UnitOfWorkError, match="read-only"):
        await client.get("/sneaky")
    assert await stored_names() == []


async def test_a_nested_unit_in_a_read_only_one_keeps_its_callbacks_apart() -> None:
    ran: list[str] = []
    async with unit_of_work(readonly=True):
        await Widget.query.count()
        async with unit_of_work():  # no savepoint: nothing to undo
            on_commit(lambda: ran.append("kept"))
        with pytest.raises(RuntimeError):
            async with unit_of_work():
                on_commit(lambda: ran.append("dropped"))
                raise RuntimeError("the nested block failed")

    assert ran == ["kept"]
