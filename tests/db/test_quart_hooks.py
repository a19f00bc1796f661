"""The commit decision is taken on the final status, whichever hook set it."""

from __future__ import annotations

import pytest
from quart import Blueprint, Quart, after_this_request
from quart.typing import ResponseTypes

from service.db import session
from service.db.quart import Database
from service.errors import register_error_handlers
from tests.db.app import make_layer_app, routes
from tests.db.conftest import ReadNames, Serve
from tests.db.models import Widget

# The final status is the one the client sees -----------------------------------------------------


def _downgrade(response: ResponseTypes) -> ResponseTypes:
    response.status_code = 400
    return response


@pytest.mark.service_committing
async def test_an_after_request_hook_registered_later_sees_its_status_respected(
    service_database_url: str, serve: Serve, stored_names: ReadNames
) -> None:
    app = make_layer_app({"DATABASE_URL": service_database_url})
    app.after_request(_downgrade)
    client = await serve(app)

    response = await client.post("/widgets", json={"name": "dropped"})

    assert response.status_code == 400
    assert await stored_names() == []


@pytest.mark.service_committing
async def test_an_after_request_hook_registered_before_the_extension_is_respected(
    service_database_url: str, serve: Serve, stored_names: ReadNames
) -> None:
    app = Quart(__name__)
    app.config["DATABASE_URL"] = service_database_url
    app.after_request(_downgrade)
    Database(app)
    register_error_handlers(app)
    app.register_blueprint(routes)
    client = await serve(app)

    response = await client.post("/widgets", json={"name": "dropped"})

    assert response.status_code == 400
    assert await stored_names() == []


@pytest.mark.service_committing
async def test_blueprint_and_per_request_hooks_are_respected(
    service_database_url: str, serve: Serve, stored_names: ReadNames
) -> None:
    blueprint = Blueprint("downgrading", __name__)
    blueprint.after_request(_downgrade)

    @blueprint.post("/bp/widgets")
    async def create() -> tuple[dict[str, bool], int]:

        await Widget.create(name="from-blueprint")
        return {"ok": True}, 201

    @blueprint.post("/bp/this-request")
    async def create_with_after_this_request() -> tuple[dict[str, bool], int]:

        after_this_request(_downgrade)
        await Widget.create(name="after-this-request")
        return {"ok": True}, 201

    app = make_layer_app({"DATABASE_URL": service_database_url})
    app.register_blueprint(blueprint)
    client = await serve(app)

    assert (await client.post("/bp/widgets")).status_code == 400
    assert (await client.post("/bp/this-request")).status_code == 400
    assert await stored_names() == []


@pytest.mark.service_committing
async def test_a_hook_that_turns_an_error_into_success_commits(
    service_database_url: str, serve: Serve, stored_names: ReadNames
) -> None:
    app = make_layer_app({"DATABASE_URL": service_database_url})

    @app.after_request
    def upgrade(response: ResponseTypes) -> ResponseTypes:
        response.status_code = 200
        return response

    client = await serve(app)

    response = await client.post("/widgets?status=418", json={"name": "kept"})

    assert response.status_code == 200
    assert await stored_names() == ["kept"]


@pytest.mark.service_committing
async def test_an_after_request_hook_that_raises_rolls_back(
    service_database_url: str, serve: Serve, stored_names: ReadNames
) -> None:
    app = make_layer_app({"DATABASE_URL": service_database_url})

    @app.after_request
    def explode(response: ResponseTypes) -> ResponseTypes:
        raise RuntimeError("after_request failed")

    client = await serve(app)

    response = await client.post("/widgets", json={"name": "dropped"})

    assert response.status_code == 500
    assert await stored_names() == []
    assert session.registry.registry == {}
