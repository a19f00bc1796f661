"""The app: health, readiness, JSON errors, configuration, and the extension's guard rails."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from quart import Quart
from quart.typing import TestClientProtocol as Client
from sqlalchemy import inspect

import service.db
import service.db.quart
from service.app import MAX_BODY_BYTES, create_app, db
from service.db import make_engine
from service.db.quart import Database
from tests.service_app import make_service_test_app


def _error(body: Any) -> dict[str, str]:
    error: dict[str, str] = body["error"]
    return error


async def test_healthz_answers_while_the_process_is_up(service_client: Client) -> None:
    response = await service_client.get("/healthz")
    assert response.status_code == 200
    assert await response.get_json() == {"status": "ok"}


async def test_readyz_answers_200_when_the_database_answers(service_client: Client) -> None:
    response = await service_client.get("/readyz")
    assert response.status_code == 200
    assert await response.get_json() == {"status": "ready"}


async def test_readyz_answers_a_json_503_when_the_database_does_not() -> None:
    app = create_app({"DATABASE_URL": "postgresql+asyncpg://postgres@127.0.0.1:1/nowhere"})
    async with app.test_app():
        response = await app.test_client().get("/readyz")
    assert response.status_code == 503
    assert _error(await response.get_json())["code"] == "database_unavailable"


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/no/such/route", 404, "not_found"),
        ("POST", "/healthz", 405, "method_not_allowed"),
        ("POST", "/widgets/raise", 500, "internal_server_error"),
    ],
)
async def test_every_error_response_is_json(
    service_app: Quart, method: str, path: str, status: int, code: str
) -> None:
    # The service's app with the layer's test routes (one raises), and an unhandled exception
    # answered as in production instead of reaching the test.
    app = make_service_test_app({**service_app.config, "PROPAGATE_EXCEPTIONS": False})
    async with app.test_app():
        response = await app.test_client().open(path, method=method, json={"name": "x"})

    assert response.status_code == status
    assert response.content_type == "application/json"
    error = _error(await response.get_json())
    assert error["code"] == code
    assert error["message"]
    if status == 405:
        assert "GET" in response.headers["Allow"]


def test_configuration_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "sqlite+aiosqlite:///elsewhere.db")
    assert create_app().config["DATABASE_URL"] == "sqlite+aiosqlite:///elsewhere.db"
    monkeypatch.delenv("DATABASE_URL")
    assert create_app().config["DATABASE_URL"] == "sqlite+aiosqlite:///var/service.db"


def test_the_database_timeouts_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = ["DATABASE_CONNECT_TIMEOUT", "DATABASE_COMMAND_TIMEOUT", "DATABASE_POOL_TIMEOUT"]
    assert [create_app().config[key] for key in keys] == [5.0, 30.0, 10.0]
    for key, value in zip(keys, ["1.5", "4", "2"], strict=True):
        monkeypatch.setenv(key, value)
    assert [create_app().config[key] for key in keys] == [1.5, 4.0, 2.0]


async def test_serving_creates_no_tables(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/fresh.db"
    app = create_app({"DATABASE_URL": url})
    async with app.test_app():
        assert (await app.test_client().get("/readyz")).status_code == 200
    engine = make_engine(url)
    async with engine.connect() as connection:
        tables = await connection.run_sync(lambda sync: inspect(sync).get_table_names())
    await engine.dispose()
    assert tables == []


def test_the_extension_refuses_a_second_registration() -> None:
    app = create_app()
    with pytest.raises(RuntimeError, match="already registered"):
        Database(app)


async def test_the_engine_exists_only_while_serving() -> None:
    app = create_app()
    async with app.app_context():
        with pytest.raises(RuntimeError, match="only while the app is serving"):
            _ = db.engine


@pytest.mark.service_committing  # the app's own pool, not the test's shared connection
async def test_the_engine_is_disposed_when_serving_stops(service_database_url: str) -> None:
    # Eager jobs: no dispatcher whose sweeper would check connections in and out meanwhile.
    app = create_app({"DATABASE_URL": service_database_url, "JOBS_BACKEND": "eager"})
    async with app.test_app():
        async with app.app_context():
            engine = db.engine
        assert (await app.test_client().get("/readyz")).status_code == 200
        assert engine.sync_engine.pool.checkedin() == 1  # type: ignore[attr-defined]
    assert engine.sync_engine.pool.checkedin() == 0  # type: ignore[attr-defined]
    async with app.app_context():
        with pytest.raises(RuntimeError, match="only while the app is serving"):
            _ = db.engine


async def test_an_app_without_the_extension_says_so() -> None:
    async with Quart(__name__).app_context():
        with pytest.raises(RuntimeError, match="init_app"):
            _ = db.engine


async def test_a_request_before_serving_starts_fails_clearly() -> None:
    app = create_app({"PROPAGATE_EXCEPTIONS": True})
    with pytest.raises(RuntimeError, match="before the app started serving"):
        await app.test_client().get("/healthz")


def test_the_layer_exports_a_small_public_surface() -> None:
    assert service.db.__all__ == [
        "Bind",
        "KeysetPage",
        "Model",
        "NotFoundError",
        "NotLoadedError",
        "Page",
        "Query",
        "ReplicaStats",
        "RolledBackError",
        "UTCDateTime",
        "UnitOfWorkError",
        "caller",
        "current_unit_of_work",
        "events",
        "make_engine",
        "on_commit",
        "read_from_primary",
        "reading_after",
        "session",
        "unit_of_work",
        "wal_position",
    ]
    assert service.db.quart.__all__ == ["Database", "streaming_body"]
    assert all(hasattr(service.db, name) for name in service.db.__all__)


# The guard in front of the app (service.guard), driven as Hypercorn drives it: over ASGI.


def _scope(*headers: tuple[bytes, bytes], address: str = "192.0.2.1", version: str = "1.1") -> Any:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": version,
        "method": "POST",
        "scheme": "http",
        "path": "/users",
        "raw_path": b"/users",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"x"), (b"content-type", b"application/json"), *headers],
        "client": (address, 40000),
        "server": ("127.0.0.1", 8000),
        "extensions": {},
    }


class _Exchange:
    """One request over ASGI: its body's first byte, then nothing until ``release``."""

    def __init__(self, whole: bytes | None = None) -> None:
        self.sent: list[dict[str, Any]] = []
        self.released = asyncio.Event()
        self.first = True
        self.whole = whole
        """The whole body, sent at once, instead of a stall."""

    async def receive(self) -> dict[str, Any]:
        if self.first:
            self.first = False
            if self.whole is not None:
                return {"type": "http.request", "body": self.whole, "more_body": False}
            return {"type": "http.request", "body": b"{", "more_body": True}
        await self.released.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    def answer(self) -> tuple[int, dict[bytes, bytes], Any]:
        start, body = self.sent[0], self.sent[1]
        return start["status"], dict(start["headers"]), json.loads(body["body"])


async def test_bodies_being_received_are_bounded_in_all_and_per_address(
    service_database_url: str,
) -> None:
    # The review's 800 connections each stalling a 1 MiB body took a worker from 234 to
    # 1,288 MiB. A body counts at its declared length until its request is over.
    app = create_app(
        {"DATABASE_URL": service_database_url, "BODY_BUFFER_LIMIT": 4 * MAX_BODY_BYTES}
    )
    declared = (b"content-length", str(MAX_BODY_BYTES).encode())
    async with app.test_app():
        stalled = [_Exchange() for _ in range(4)]
        tasks: list[asyncio.Task[None]] = []

        async def stall(number: int) -> None:
            exchange, scope = stalled[number], _scope(declared, address=f"192.0.2.{number}")
            tasks.append(asyncio.create_task(app(scope, *_io(exchange))))
            await asyncio.sleep(0.05)

        await stall(0)
        # The budget has room for three more, but not this address: a quarter of it each.
        over_address = _Exchange()
        await asyncio.wait_for(app(_scope(declared, address="192.0.2.0"), *_io(over_address)), 5)
        for number in (1, 2, 3):
            await stall(number)
        over_all = _Exchange()
        await asyncio.wait_for(app(_scope(declared, address="192.0.2.9"), *_io(over_all)), 5)
        small = _Exchange()  # a body of 10 bytes finds no room either: the budget is spent
        await asyncio.wait_for(app(_scope((b"content-length", b"10")), *_io(small)), 5)
        for exchange in stalled:
            exchange.released.set()
        await asyncio.gather(*tasks)
        after = _Exchange(whole=b'{"name": "A", "email": "after@example.com"}')
        await asyncio.wait_for(app(_scope(declared, address="192.0.2.9"), *_io(after)), 5)

    for refused in (over_all, over_address, small):
        status, headers, body = refused.answer()
        assert (status, body["error"]["code"]) == (503, "server_busy")
        assert headers[b"retry-after"] == b"1" and headers[b"connection"] == b"close"
    assert all(not exchange.sent or exchange.sent[0]["status"] != 503 for exchange in stalled)
    assert after.sent[0]["status"] == 201  # released: room again


def _io(exchange: _Exchange) -> tuple[Any, Any]:
    return exchange.receive, exchange.send


async def test_a_request_with_both_content_length_and_transfer_encoding_is_refused(
    service_client: Client, service_app: Quart
) -> None:
    # RFC 9112 §6.1: a proxy in front that reads the other header sees another request;
    # answered 400, and the connection closed.
    exchange = _Exchange()
    scope = _scope((b"content-length", b"4"), (b"transfer-encoding", b"chunked"))
    await asyncio.wait_for(service_app(scope, *_io(exchange)), 5)

    status, headers, body = exchange.answer()
    assert (status, body["error"]["code"]) == (400, "ambiguous_body_length")
    assert headers[b"connection"] == b"close"
    assert exchange.first  # its body was never read


async def test_the_http2_preface_read_as_http1_is_a_505(service_app: Quart) -> None:
    exchange = _Exchange()
    await asyncio.wait_for(service_app(_scope(version="2.0"), *_io(exchange)), 5)
    status, headers, body = exchange.answer()
    assert (status, body["error"]["code"]) == (505, "http_version_not_supported")
    assert headers[b"connection"] == b"close"
