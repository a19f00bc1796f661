"""The Quart application: ``create_app()``, and ``app`` for ``hypercorn service.app:app``."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from quart import Quart, Response, current_app
from quart_schema import Info, QuartSchema, security_scheme
from sqlalchemy import text

from service import modules
from service.config import Settings
from service.db import Database
from service.errors import JSONRequest, error_response, register_error_handlers
from service.jobs import Jobs
from service.ledger.api import api

db = Database()
jobs = Jobs(db)

MAX_BODY_BYTES = 1024 * 1024


def create_app(config: Mapping[str, Any] | None = None) -> Quart:
    """Build the app from the environment, then ``config`` on top."""
    modules.load()
    app = Quart(__name__)
    app.request_class = JSONRequest
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.config.update(Settings().to_app_config())
    if config:
        app.config.update(config)
    db.init_app(app)
    jobs.init_app(app)
    QuartSchema(
        app,
        info=Info(title="Ledger API", version="0.1.0"),
        security_schemes={"bearer": {"type": "http", "scheme": "bearer"}},
        security=[{"bearer": []}],
    )
    register_error_handlers(app)
    app.register_blueprint(api)

    @app.get("/healthz")
    @security_scheme([])  # documented as open, like /readyz: probes carry no token
    async def healthz() -> dict[str, str]:
        """The process is up. Touches no database."""
        return {"status": "ok"}

    @app.get("/readyz")
    @security_scheme([])
    async def readyz() -> dict[str, str] | Response:
        """The database answers within READINESS_TIMEOUT seconds."""
        try:
            async with asyncio.timeout(current_app.config["READINESS_TIMEOUT"]):
                async with db.engine.connect() as connection:
                    await connection.execute(text("SELECT 1"))
        except Exception:
            current_app.logger.warning("readiness check failed", exc_info=True)
            return error_response(503, "database_unavailable", "The database does not answer.")
        return {"status": "ready"}

    return app


app = create_app()
