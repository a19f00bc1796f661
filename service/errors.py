"""Every error response is JSON: ``{"error": {"code": "...", "message": "..."}}``."""

from __future__ import annotations

from quart import Quart, Response, jsonify
from werkzeug.exceptions import HTTPException


def error_response(status: int, code: str, message: str) -> Response:
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status
    return response


def _http_error(error: HTTPException) -> Response:
    status = error.code or 500
    code = (error.name or "error").lower().replace(" ", "_").replace("'", "")
    response = error_response(status, code, error.description or error.name)
    for name, value in error.get_headers():
        if name.lower() != "content-type":  # keeps Allow on 405, Retry-After on 503
            response.headers[name] = value
    return response


def register_error_handlers(app: Quart) -> None:
    # Unhandled exceptions reach this handler as InternalServerError, so 500s are JSON too.
    app.register_error_handler(HTTPException, _http_error)
