"""The app: health, readiness, JSON errors, configuration, and the extension's guard rails."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from quart import Quart
from quart.typing import TestClientProtocol as Client
from sqlalchemy import inspect

import service.db
from service.app import create_app, db
from service.db import Database, make_engine


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


@pytest.mark.usefixtures("errors_as_responses")
@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/no/such/route", 404, "not_found"),
        ("POST", "/healthz", 405, "method_not_allowed"),
        ("POST", "/widgets/raise", 500, "internal_server_error"),
    ],
)
async def test_every_error_response_is_json(
    service_client: Client, method: str, path: str, status: int, code: str
) -> None:
    response = await service_client.open(path, method=method, json={"name": "x"})

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
        "Database",
        "KeysetPage",
        "Model",
        "NotLoadedError",
        "Page",
        "Query",
        "RolledBackError",
        "UTCDateTime",
        "UnitOfWorkError",
        "events",
        "make_engine",
        "on_commit",
        "session",
        "streaming_body",
        "unit_of_work",
    ]
    assert all(hasattr(service.db, name) for name in service.db.__all__)
