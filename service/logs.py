"""Structured logs: one JSON line per request (``service.access``) and per movement of money
(``service.money``), on standard error, with python-json-logger. With read replicas, the
layer's replica lines too (``service.db.replicas``: rotation changes, counters).

An access line has the request id, method, route template (``/accounts/<int:account_id>``,
never the path with its ids), final status, duration in milliseconds and the caller's user
id; never a header, a body or a token. ``ACCESS_LOG=false`` writes neither.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from pydantic_core import to_json
from pythonjsonlogger.json import JsonFormatter
from quart import Quart, Response, g, request, request_finished

from service.security import request_id

__all__ = ["ACCESS", "MONEY", "configure", "init_app", "set_user"]

ACCESS = logging.getLogger("service.access")
MONEY = logging.getLogger("service.money")
REPLICAS = logging.getLogger("service.db.replicas")
_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def configure(*loggers: logging.Logger) -> None:
    """Give the loggers (both by default) a JSON handler on standard error, once per process."""
    for logger in loggers or (ACCESS, MONEY):
        if not any(getattr(handler, "_service_json", False) for handler in logger.handlers):
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(
                JsonFormatter(
                    _FORMAT, rename_fields={"levelname": "level"}, json_serializer=_to_json
                )
            )
            handler._service_json = True  # type: ignore[attr-defined]
            logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False  # one line each, whatever the root logger does


def _to_json(record: dict[str, Any], **options: Any) -> str:
    # pydantic's Rust serializer, a line in a few microseconds; anything it does not know
    # (an exception's traceback is already text) becomes its ``str()``.
    return to_json(record, fallback=str).decode()


def set_user(user_id: int) -> None:
    """Record the authenticated caller for this request's access line."""
    g.user_id = user_id


def _line(status: int | None) -> dict[str, Any]:
    started: float | None = g.get("started")
    rule = request.url_rule
    return {
        "request_id": request_id(),
        "method": request.method,
        "route": rule.rule if rule is not None else None,
        "status": status,
        "duration_ms": None
        if started is None
        else round((time.perf_counter() - started) * 1000, 2),
        "user_id": g.get("user_id"),
    }


def init_app(app: Quart) -> None:
    if app.config.get("DATABASE_REPLICA_URLS"):
        configure(REPLICAS)
    if not app.config["ACCESS_LOG"]:
        return
    configure()

    async def finished(sender: Quart, response: Response, **extra: Any) -> None:
        # Sent once the response is final, the layer's commit decided: its status is the
        # client's. (An after_request hook would see a 201 that a failed commit turns into 503.)
        g.access_logged = True
        ACCESS.info("request", extra=_line(response.status_code))

    async def teardown(exc: BaseException | None) -> None:
        # No response was made: the client went away (the handler was cancelled) or, in
        # testing, an exception propagated.
        if not g.get("access_logged"):
            ACCESS.info("request", extra={**_line(None), "outcome": "no response"})

    request_finished.connect(finished, sender=app, weak=False)
    app.teardown_request(teardown)
