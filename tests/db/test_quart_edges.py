"""The Quart binding where Quart itself takes unusual paths."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from quart import Quart, g
from quart.typing import ResponseTypes
from quart.typing import TestClientProtocol as Client
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.app import db
from service.db import Model, make_engine, session, unit_of_work
from service.db.quart import Database
from service.errors import register_error_handlers
from tests.db.app import make_layer_app, routes
from tests.db.conftest import ReadNames, Serve
from tests.db.models import Widget


@pytest.mark.service_committing
async def test_a_preserved_request_context_still_commits_and_removes_its_session(
    layer_app: Quart, stored_names: ReadNames, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `async with layer_app.test_client()` keeps each request's context until the
    # next request or the block's end: teardown then runs in another task.
    async with layer_app.test_client() as client:
        assert (await client.post("/widgets", json={"name": "kept"})).status_code == 201
        assert (await client.post("/widgets?status=400", json={"name": "no"})).status_code == 400
    monkeypatch.setitem(layer_app.config, "PROPAGATE_EXCEPTIONS", True)
    monkeypatch.setitem(layer_app.config, "TESTING", False)  # else a traceback page answers
    async with layer_app.test_client() as client:
        with pytest.raises(RuntimeError):
            await client.post("/widgets/raise", json={"name": "raised"})

    assert session.registry.registry == {}
    async with layer_app.app_context():
        assert db.engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert await stored_names() == ["kept"]


@pytest.mark.service_committing
async def test_another_hook_may_use_the_database_before_the_view(
    service_database_url: str,
    serve: Serve,
    stored_names: ReadNames,  # noqa: F811
) -> None:
    app = Quart(__name__)
    app.config["DATABASE_URL"] = service_database_url

    @app.before_request
    async def remember_count() -> None:  # registered before the extension
        g.widgets_before = await Widget.query.count()

    Database(app)
    register_error_handlers(app)
    app.register_blueprint(routes)

    @app.post("/counted")
    async def counted() -> tuple[dict[str, int], int]:
        await Widget.create(name="counted")
        return {"before": g.widgets_before}, 201

    client = await serve(app)

    response = await client.post("/counted")

    assert (response.status_code, await response.get_json()) == (201, {"before": 0})
    assert await stored_names() == ["counted"]


@pytest.mark.service_committing
async def test_a_failed_commit_keeps_the_headers_other_hooks_set(
    service_database_url: str,
    serve: Serve,  # noqa: F811
) -> None:
    app = make_layer_app({"DATABASE_URL": service_database_url})

    @app.after_request
    def cors(response: ResponseTypes) -> ResponseTypes:
        response.headers["Access-Control-Allow-Origin"] = "*"
        return response

    client = await serve(app)

    response = await client.post("/parts", json={"name": "orphan-owner"})

    assert response.status_code == 409
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert response.content_type == "application/json"


@pytest.mark.service_committing
async def test_a_lost_connection_on_an_error_status_stays_that_status(
    service_database_url: str, layer_client: Client, stored_names: ReadNames
) -> None:
    if not service_database_url.startswith("postgresql"):
        pytest.skip("SQLite has no server that could drop the connection")

    # The rollback fails as well: that must not turn the 422 into a 500.
    response = await layer_client.post("/widgets/cut?status=422", json={"name": "lost"})

    assert response.status_code == 422
    assert await stored_names() == []


@pytest.fixture
async def two_apps(tmp_path: Path) -> AsyncIterator[tuple[Quart, Quart, str, str]]:
    urls = [f"sqlite+aiosqlite:///{tmp_path}/{name}.db" for name in ("a", "b")]
    for url in urls:
        engine = make_engine(url)
        async with engine.begin() as connection:
            await connection.run_sync(
                Model.metadata.create_all, tables=[Model.metadata.tables["test_widgets"]]
            )
        await engine.dispose()
    first, second = (make_layer_app({"DATABASE_URL": url}) for url in urls)
    yield first, second, urls[0], urls[1]


async def _names(url: str) -> list[str]:
    engine = make_engine(url)
    async with engine.connect() as connection:
        names = list((await connection.scalars(select(Widget.name))).all())
    await engine.dispose()
    return names


@pytest.mark.service_committing
async def test_two_apps_in_one_process_write_to_their_own_databases(
    two_apps: tuple[Quart, Quart, str, str],
) -> None:
    first, second, first_url, second_url = two_apps
    async with first.test_app():
        async with second.test_app():
            assert (
                await first.test_client().post("/widgets", json={"name": "a"})
            ).status_code == 201
            assert (
                await second.test_client().post("/widgets", json={"name": "b"})
            ).status_code == 201
        # The second app has stopped; the first still serves from its own engine.
        assert (await first.test_client().post("/widgets", json={"name": "a2"})).status_code == 201

    assert sorted(await _names(first_url)) == ["a", "a2"]
    assert await _names(second_url) == ["b"]


@pytest.mark.service_committing
async def test_units_in_child_tasks_of_a_second_apps_request_use_its_database(
    two_apps: tuple[Quart, Quart, str, str],
) -> None:
    first, second, first_url, second_url = two_apps
    async with first.test_app():
        async with second.test_app():  # the first app's engine is the default one
            response = await second.test_client().post("/widgets/gather-units")
            assert response.status_code == 201

    assert await _names(first_url) == []
    assert sorted(await _names(second_url)) == ["unit-1", "unit-2"]


@unit_of_work()
async def _create_widget(name: str) -> None:
    await Widget.create(name=name)


@pytest.mark.service_committing
async def test_a_unit_in_a_child_task_uses_the_database_of_the_unit_it_was_started_from(
    tmp_path: Path,
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/own.db"
    engine = make_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(
                Model.metadata.create_all, tables=[Model.metadata.tables["test_widgets"]]
            )
        async with unit_of_work(bind=engine):  # another database than the default one
            await asyncio.create_task(_create_widget("from a child task"))
    finally:
        await engine.dispose()

    assert await _names(url) == ["from a child task"]


@pytest.fixture
async def commit_guard(service_database_url: str, reader: AsyncEngine) -> AsyncIterator[None]:
    """A table whose deferred trigger fails every COMMIT that inserted into it."""
    if not service_database_url.startswith("postgresql"):
        pytest.skip("needs a deferred trigger that raises at COMMIT (PostgreSQL)")
    async with reader.begin() as connection:
        for statement in (
            "CREATE TABLE test_commit_guard (id integer)",
            "CREATE FUNCTION test_fail_at_commit() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'refused at commit'; END $$",
            "CREATE CONSTRAINT TRIGGER test_commit_guard_trigger AFTER INSERT ON test_commit_guard"
            " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION test_fail_at_commit()",
        ):
            await connection.execute(text(statement))
    try:
        yield
    finally:
        async with reader.begin() as connection:
            await connection.execute(text("DROP TABLE test_commit_guard"))
            await connection.execute(text("DROP FUNCTION test_fail_at_commit()"))


@pytest.mark.service_committing
@pytest.mark.usefixtures("commit_guard")
async def test_a_commit_that_fails_otherwise_answers_a_json_500(
    layer_client: Client, stored_names: ReadNames
) -> None:
    response = await layer_client.post("/commit-guard", json={"name": "refused"})

    assert response.status_code == 500
    assert (await response.get_json())["error"]["code"] == "internal_server_error"
    assert await stored_names() == []
    assert (await layer_client.post("/widgets", json={"name": "next"})).status_code == 201
