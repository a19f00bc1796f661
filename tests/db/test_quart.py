"""Each request is a unit of work: the final status decides, and nothing is left behind."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from quart import Quart
from quart.typing import ResponseTypes
from quart.typing import TestClientProtocol as Client
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from service.app import db
from service.db import UnitOfWorkError, session
from service.testing import CaptureOnCommit
from tests.db.app import Probe, make_layer_app
from tests.db.conftest import ReadNames, Serve
from tests.db.models import Widget


def _error(body: Any) -> dict[str, str]:
    error: dict[str, str] = body["error"]
    return error


# The status decides ------------------------------------------------------------------------------


@pytest.mark.service_committing
@pytest.mark.parametrize("status", [200, 201, 302, 303])
async def test_a_status_below_400_commits(
    layer_client: Client, stored_names: ReadNames, status: int
) -> None:
    response = await layer_client.post(f"/widgets?status={status}", json={"name": "kept"})

    assert response.status_code == status
    assert await stored_names() == ["kept"]


@pytest.mark.service_committing
@pytest.mark.parametrize("status", [400, 404, 422, 500, 503])
async def test_a_status_of_400_or_more_rolls_back(
    layer_client: Client, stored_names: ReadNames, status: int
) -> None:
    response = await layer_client.post(f"/widgets?status={status}", json={"name": "dropped"})

    assert response.status_code == status
    assert await stored_names() == []


@pytest.mark.service_committing
async def test_abort_rolls_back(layer_client: Client, stored_names: ReadNames) -> None:
    response = await layer_client.post("/widgets/abort", json={"name": "dropped"})

    assert response.status_code == 409
    assert _error(await response.get_json())["code"] == "conflict"
    assert await stored_names() == []


@pytest.mark.usefixtures("layer_errors_as_responses")
@pytest.mark.service_committing
async def test_an_exception_rolls_back_and_answers_a_json_500(
    layer_client: Client, stored_names: ReadNames
) -> None:
    response = await layer_client.post("/widgets/raise", json={"name": "dropped"})

    assert response.status_code == 500
    assert _error(await response.get_json())["code"] == "internal_server_error"
    assert await stored_names() == []


@pytest.mark.service_committing
async def test_a_propagated_exception_rolls_back_in_teardown(
    layer_app: Quart,
    layer_client: Client,
    stored_names: ReadNames,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # In testing and debug mode after_request never runs; teardown must clean up.
    monkeypatch.setitem(layer_app.config, "PROPAGATE_EXCEPTIONS", True)
    monkeypatch.setitem(layer_app.config, "TESTING", False)  # else a traceback page answers

    with pytest.raises(RuntimeError, match="after writing"):
        await layer_client.post("/widgets/raise", json={"name": "dropped"})

    assert await stored_names() == []
    assert session.registry.registry == {}


# A commit that fails never answers 2xx ----------------------------------------------------------


@pytest.mark.service_committing
async def test_a_constraint_violated_at_commit_answers_409_and_writes_nothing(
    layer_client: Client, stored_names: ReadNames
) -> None:
    response = await layer_client.post("/parts", json={"name": "orphan-owner"})

    assert response.status_code == 409
    error = _error(await response.get_json())
    assert error["code"] == "conflict"
    assert "not saved" in error["message"]
    assert await stored_names() == []

    # The failed commit poisoned nothing: the next request commits normally.
    assert (await layer_client.post("/widgets", json={"name": "next"})).status_code == 201
    assert await stored_names() == ["next"]


@pytest.mark.service_committing
async def test_a_connection_lost_before_commit_answers_503(
    service_database_url: str, layer_client: Client, stored_names: ReadNames
) -> None:
    if not service_database_url.startswith("postgresql"):
        pytest.skip("SQLite has no server that could drop the connection")

    response = await layer_client.post("/widgets/cut", json={"name": "lost"})

    assert response.status_code == 503
    assert _error(await response.get_json())["code"] == "service_unavailable"
    assert await stored_names() == []
    assert (await layer_client.post("/widgets", json={"name": "next"})).status_code == 201


# Requests that do not use the database ----------------------------------------------------------


@pytest.mark.service_committing
async def test_a_request_that_does_not_use_the_database_opens_no_connection(
    layer_app: Quart, layer_client: Client
) -> None:
    async with layer_app.app_context():
        engine: AsyncEngine = db.engine
    checkouts: list[object] = []
    statements: list[str] = []

    def on_checkout(*args: object) -> None:
        checkouts.append(args)

    def on_execute(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    event.listen(engine.sync_engine, "checkout", on_checkout)
    event.listen(engine.sync_engine, "before_cursor_execute", on_execute)
    try:
        assert (await layer_client.get("/nodb")).status_code == 200
        assert (await layer_client.get("/nodb")).status_code == 200
        assert (await layer_client.get("/no/such/route")).status_code == 404
        assert (checkouts, statements) == ([], [])

        # The listeners do see a request that uses the database.
        assert (await layer_client.get("/widgets")).status_code == 200
        assert len(checkouts) == 1
        assert statements
    finally:
        event.remove(engine.sync_engine, "checkout", on_checkout)
        event.remove(engine.sync_engine, "before_cursor_execute", on_execute)


# Child tasks ------------------------------------------------------------------------------------


@pytest.mark.usefixtures("layer_errors_as_responses")
@pytest.mark.service_committing
async def test_model_calls_in_a_child_task_fail_loudly_and_write_nothing(
    layer_app: Quart,
    layer_client: Client,
    stored_names: ReadNames,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    response = await layer_client.post("/widgets/gather")
    assert response.status_code == 500
    assert await stored_names() == []

    monkeypatch.setitem(layer_app.config, "PROPAGATE_EXCEPTIONS", True)
    monkeypatch.setitem(layer_app.config, "TESTING", False)  # else a traceback page answers
    with pytest.raises(UnitOfWorkError, match=r"child task.*`@unit_of_work\(\)`"):
        await layer_client.post("/widgets/gather")
    assert await stored_names() == []
    assert session.registry.registry == {}


@pytest.mark.service_committing
async def test_child_coroutines_decorated_as_units_of_work_commit_their_own_work(
    layer_client: Client, stored_names: ReadNames
) -> None:
    response = await layer_client.post("/widgets/gather-units")

    assert response.status_code == 201
    assert await stored_names() == ["unit-1", "unit-2"]
    assert session.registry.registry == {}


# Cancellation and concurrency -------------------------------------------------------------------


async def _request_then_disconnect(app: Quart, probe: Probe, name: str) -> list[Any]:
    """POST /widgets/wait over raw ASGI, and hang up once the handler has written."""
    body = f'{{"name": "{name}"}}'.encode()
    scope: Any = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/widgets/wait",
        "raw_path": b"/widgets/wait",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"test"), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 50000),
        "server": ("test", 80),
        "extensions": {},
    }
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    inbox.put_nowait({"type": "http.request", "body": body, "more_body": False})
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return await inbox.get()

    async def send(message: Any) -> None:
        sent.append(message)

    probe.started.clear()
    call = asyncio.ensure_future(app(scope, receive, send))  # type: ignore[arg-type]
    await asyncio.wait_for(probe.started.wait(), 5)
    inbox.put_nowait({"type": "http.disconnect"})
    await asyncio.wait_for(call, 5)
    return sent


@pytest.mark.service_committing
async def test_a_client_that_disconnects_leaves_no_write_and_no_session(
    layer_app: Quart, stored_names: ReadNames, fresh_probe: Probe
) -> None:
    sent = await _request_then_disconnect(layer_app, fresh_probe, "abandoned")

    assert sent == []  # the handler was cancelled before it could answer
    assert await stored_names() == []
    assert session.registry.registry == {}


@pytest.mark.service_committing
async def test_concurrent_requests_never_see_each_others_uncommitted_rows(
    layer_client: Client, stored_names: ReadNames, fresh_probe: Probe
) -> None:
    writer = asyncio.ensure_future(layer_client.post("/widgets/wait", json={"name": "pending"}))
    await asyncio.wait_for(fresh_probe.started.wait(), 5)

    during = await layer_client.get("/widgets")  # a reader alongside the open write transaction

    fresh_probe.proceed.set()
    assert (await writer).status_code == 201
    assert (await during.get_json())["names"] == []
    assert (await (await layer_client.get("/widgets")).get_json())["names"] == ["pending"]


@pytest.mark.service_committing
async def test_a_write_request_that_reads_first_waits_instead_of_failing(
    layer_client: Client, stored_names: ReadNames, fresh_probe: Probe
) -> None:
    # On SQLite a DEFERRED transaction that has read cannot take the write lock
    # once another writer has committed: it fails at once, busy timeout or not.
    # A POST begins IMMEDIATE, so the second writer waits for the first instead.
    first = asyncio.ensure_future(
        layer_client.post("/widgets/read-then-write", json={"name": "first"})
    )
    await asyncio.wait_for(fresh_probe.started.wait(), 5)
    second = asyncio.ensure_future(layer_client.post("/widgets", json={"name": "second"}))
    await asyncio.sleep(0.2)

    fresh_probe.proceed.set()
    responses = await asyncio.gather(first, second)

    assert [response.status_code for response in responses] == [201, 201]
    assert await stored_names() == ["first", "second"]


@pytest.mark.usefixtures("layer_errors_as_responses")  # /widgets/raise answers a 500
@pytest.mark.service_committing
async def test_the_registry_holds_no_session_after_many_requests(
    layer_app: Quart, layer_client: Client, fresh_probe: Probe
) -> None:
    for number in range(40):
        await layer_client.post("/widgets", json={"name": f"ok-{number}"})
        await layer_client.post("/widgets?status=422", json={"name": f"refused-{number}"})
        await layer_client.post("/widgets/raise", json={"name": f"raised-{number}"})
        await layer_client.post("/parts", json={"name": f"failed-commit-{number}"})
        await layer_client.get("/widgets")
        await layer_client.get("/nodb")
    for number in range(5):
        await _request_then_disconnect(layer_app, fresh_probe, f"cancelled-{number}")

    assert session.registry.registry == {}
    async with layer_app.app_context():
        assert db.engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


@pytest.mark.service_committing
async def test_a_streamed_body_cannot_write_after_the_commit(
    service_database_url: str, serve: Serve, stored_names: ReadNames
) -> None:
    # The body is sent after the request context (and its unit of work) is gone.
    app = make_layer_app({"DATABASE_URL": service_database_url})
    failures: list[BaseException] = []

    @app.get("/stream")
    async def stream() -> ResponseTypes:
        async def body() -> AsyncIterator[bytes]:
            yield b"["
            try:
                await Widget.create(name="written-while-streaming")
            except UnitOfWorkError as error:
                failures.append(error)
            yield b"]"

        return app.response_class(body())

    client = await serve(app)

    response = await client.get("/stream")

    assert await response.get_data() == b"[]"
    assert [type(failure) for failure in failures] == [UnitOfWorkError]
    assert await stored_names() == []


# on_commit through requests ---------------------------------------------------------------------


async def test_on_commit_runs_once_after_a_successful_request(
    layer_client: Client, fresh_probe: Probe
) -> None:
    response = await layer_client.post("/on-commit", json={"name": "done"})

    assert response.status_code == 201
    assert fresh_probe.committed == ["done"]


@pytest.mark.parametrize("status", [400, 500])
async def test_on_commit_never_runs_after_a_rolled_back_request(
    layer_client: Client, fresh_probe: Probe, status: int
) -> None:
    response = await layer_client.post(f"/on-commit?status={status}", json={"name": "undone"})

    assert response.status_code == status
    assert fresh_probe.committed == []


async def test_a_captured_on_commit_callback_waits_for_the_test_to_run_it(
    layer_client: Client, fresh_probe: Probe, service_on_commit: CaptureOnCommit
) -> None:
    with service_on_commit() as callbacks:
        assert (await layer_client.post("/on-commit", json={"name": "held"})).status_code == 201
        response = await layer_client.post("/on-commit?status=400", json={"name": "undone"})
        assert response.status_code == 400

    assert (len(callbacks), fresh_probe.committed) == (1, [])
    await callbacks.run()
    assert fresh_probe.committed == ["held"]


@pytest.mark.parametrize("attempt", [1, 2])
async def test_requests_join_the_tests_transaction_which_is_rolled_back(
    layer_client: Client, stored_names: ReadNames, attempt: int
) -> None:
    # Whichever attempt runs second would find the first one's row if the
    # outer transaction were not rolled back (and fail on the unique name).
    assert await stored_names() == []
    assert (await layer_client.post("/widgets", json={"name": "visible"})).status_code == 201
    assert await stored_names() == ["visible"]
