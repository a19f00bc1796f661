"""Every error response is JSON: ``{"error": {"code": "...", "message": "...", "details"?}}``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from quart import Quart, Request, Response, jsonify
from quart_schema import RequestSchemaValidationError, document_response
from werkzeug.exceptions import HTTPException

F = TypeVar("F", bound=Callable[..., Any])


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: list[dict[str, object]] | None = None


class ErrorOut(BaseModel):
    """Every error answer: ``{"error": {"code", "message", "details"?}}``."""

    error: ErrorDetail


def documents_errors(*statuses: int) -> Callable[[F], F]:
    """Document each of ``statuses`` as answered with ``ErrorOut`` in the OpenAPI document."""

    def decorate(view: F) -> F:
        for status in statuses:
            view = document_response(ErrorOut, status)(view)
        return view

    return decorate


class ApiError(HTTPException):
    """An error with a status, a stable machine-readable code and a message for people."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: list[dict[str, Any]] | None = None,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = status
        self.error_code = code
        self.details = details
        self.extra_headers = dict(headers or {})


class JSONRequest(Request):
    """Reads the body as JSON whatever its content type; bad JSON is a 400 ``invalid_json``.

    Bad JSON includes bytes that are not UTF-8 and arrays or objects nested too deep to parse.
    """

    async def get_json(self, force: bool = True, silent: bool = False, cache: bool = True) -> Any:
        try:
            return await super().get_json(force=force, silent=silent, cache=cache)
        except (UnicodeDecodeError, RecursionError) as error:  # not ValueErrors: Quart lets them by
            return None if silent else self.on_json_loading_failed(error)

    def on_json_loading_failed(self, error: Exception) -> Any:
        raise ApiError(400, "invalid_json", f"The request body is not valid JSON: {error}")


def error_response(
    status: int, code: str, message: str, details: list[dict[str, Any]] | None = None
) -> Response:
    error: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    response = jsonify({"error": error})
    response.status_code = status
    return response


def _http_error(error: HTTPException) -> Response:
    status = error.code or 500
    if isinstance(error, ApiError):
        response = error_response(status, error.error_code, error.description or "", error.details)
        response.headers.update(error.extra_headers)
    else:
        code = (error.name or "error").lower().replace(" ", "_").replace("'", "")
        response = error_response(status, code, error.description or error.name)
    for name, value in error.get_headers():
        if name.lower() != "content-type":  # keeps Allow on 405, Retry-After on 503
            response.headers[name] = value
    return response


def _validation_error(error: RequestSchemaValidationError) -> Response:
    cause = error.validation_error
    if not isinstance(cause, ValidationError):
        return error_response(422, "validation_error", str(cause))
    details: list[dict[str, Any]] = [
        {"field": ".".join(str(part) for part in item["loc"]) or "body", "message": item["msg"]}
        for item in cause.errors(include_url=False, include_context=False, include_input=False)
    ]
    fields = ", ".join(detail["field"] for detail in details)
    return error_response(422, "validation_error", f"Invalid fields: {fields}", details)


def register_error_handlers(app: Quart) -> None:
    # Unhandled exceptions reach the HTTPException handler as InternalServerError: 500s are JSON.
    app.register_error_handler(RequestSchemaValidationError, _validation_error)
    app.register_error_handler(HTTPException, _http_error)
