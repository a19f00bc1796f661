"""The Quart application: ``create_app()``, and ``app`` for ``hypercorn service.app:app``."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel
from quart import Quart, Response, current_app
from quart_schema import Info, QuartSchema, operation_id, security_scheme, tag, validate_response
from sqlalchemy import text
from werkzeug.routing import IntegerConverter

from service import logs, metrics, modules, security, serialization, serving, tracing
from service.config import Settings
from service.db import events, session, unit_of_work
from service.db.quart import Database
from service.errors import JSONRequest, documents_errors, error_response, register_error_handlers
from service.guard import Guard
from service.jobs import Jobs, OutboxStats, outbox_stats
from service.ledger import auth
from service.ledger.api import api
from service.openapi import Provider, init_docs
from service.ratelimit import RateLimits

db = Database()
jobs = Jobs(db)

MAX_BODY_BYTES = 64 * 1024
"""The largest request body (413 beyond). The largest valid one is a few kB (a transfer with
a 500-character description, every character escaped): a bound on what a refused body costs
to parse and validate, and on what every body waiting to arrive holds in memory."""


class AsciiIntegerConverter(IntegerConverter):
    """``<int:...>`` of ASCII digits only: werkzeug's ``\\d`` matches every Unicode digit, so
    ``/accounts/١`` (Arabic-Indic) and ``/accounts/１`` (full-width) were account 1."""

    regex = r"[0-9]+"


TITLE = "Ledger API"


class Health(BaseModel):
    """The process is up."""

    status: str = "ok"


class Readiness(BaseModel):
    """The database answers."""

    status: str = "ready"


def create_app(config: Mapping[str, Any] | None = None) -> Quart:
    """Build the app from the environment, then ``config`` on top."""
    modules.load()
    app = Quart(__name__)
    app.url_map.converters["int"] = AsciiIntegerConverter  # before any route uses it
    app.request_class = JSONRequest
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.config.update(Settings().to_app_config())
    if config:
        app.config.update(config)
    db.init_app(app)  # first: its hooks see the request first and the response last
    jobs.init_app(app)
    security.init_app(app)
    logs.init_app(app)
    RateLimits(app)
    auth.init_app(app)
    QuartSchema(
        app,
        info=Info(title=TITLE, version="0.1.0"),
        security_schemes={"bearer": {"type": "http", "scheme": "bearer"}},
        security=[{"bearer": []}],
        swagger_ui_path=None,  # ours, offline (service.openapi)
        redoc_ui_path=None,
        scalar_ui_path=None,
        openapi_provider_class=Provider,
    )
    serialization.init_app(app)
    init_docs(app, TITLE)
    register_error_handlers(app)
    app.register_blueprint(api)
    # Next to Quart, inside the metrics port and the tracing middleware: what it refuses is
    # still traced.
    app.asgi_app = Guard(  # type: ignore[method-assign]
        app.asgi_app,
        body_limit=app.config["MAX_CONTENT_LENGTH"],
        buffer_limit=app.config["BODY_BUFFER_LIMIT"],
    )
    serving.configure(http2=app.config["HTTP2"])
    metrics.init_app(app, _outbox_stats)
    tracing.init_app(app, db)

    @app.get("/healthz")
    @tag(["Health"])
    @operation_id("check_health")
    @security_scheme([])  # documented as open, like /readyz: probes carry no token
    @validate_response(Health)
    async def healthz() -> Health:
        """The process is up. Touches no database."""
        return Health()

    @app.get("/readyz")
    @tag(["Health"])
    @operation_id("check_readiness")
    @security_scheme([])
    @validate_response(Readiness)
    @documents_errors(503)
    async def readyz() -> Readiness | Response:
        """Whether the database answers.

        Within `READINESS_TIMEOUT` seconds, or the answer is a 503.
        """
        try:
            async with asyncio.timeout(current_app.config["READINESS_TIMEOUT"]):
                await session.execute(text("SELECT 1"))  # the GET's read-only unit of work
        except Exception:
            current_app.logger.warning("readiness check failed", exc_info=True)
            return error_response(503, "database_unavailable", "The database does not answer.")
        return Readiness()

    return app


async def _outbox_stats() -> OutboxStats | None:
    """The outbox's figures for a scrape, in a read-only unit of work of its own."""
    try:
        with events.running_as("metrics"):
            async with asyncio.timeout(current_app.config["READINESS_TIMEOUT"]):
                return await unit_of_work(readonly=True, bind=db.engine)(outbox_stats)()
    except Exception:
        current_app.logger.warning("the outbox could not be read for metrics", exc_info=True)
        return None


app = create_app()
