"""Every error response is JSON: ``{"error": {"code": "...", "message": "...", "details"?}}``.

Every error body is bounded: at most ``MAX_DETAILS`` details (the first found) and
``detail_count``, the number of problems found; a message names at most as many fields.
An object of more than ``MAX_MEMBERS`` members is refused as it is parsed (422).
A request body is parsed strictly: duplicate keys, ``NaN`` and ``Infinity`` are not JSON
the API accepts, and a number with a fraction or an exponent stays exact (a ``Decimal``),
so that ``0.99999999999999999999`` is not taken for 1.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, TypeVar

from pydantic import BaseModel, Field, ValidationError
from quart import Quart, Request, Response, jsonify
from quart_schema import RequestSchemaValidationError, document_response
from werkzeug.exceptions import HTTPException

F = TypeVar("F", bound=Callable[..., Any])

MAX_DETAILS = 20
"""Details in one error body, at most: the first found."""
MAX_FIELD = 100
"""Characters of a field's name in an error (an unknown key is the client's own text)."""
MAX_MEMBERS = 100
"""Members of one JSON object, at most: the API's largest has 5. Refused while parsing,
before any validation: thousands of unknown keys would each cost a validation error."""


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: list[dict[str, object]] | None = Field(
        default=None, description=f"The first {MAX_DETAILS} problems found, at most"
    )
    detail_count: int | None = Field(
        default=None, description="How many problems were found, `details` listing the first"
    )


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


class _NotAccepted(ValueError):
    """JSON that the API does not accept, saying why in words fit for the client."""


class _TooManyMembers(ValueError):
    """Valid JSON, but an object no request of the API can have: a 422, as a field's."""


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len(pairs) > MAX_MEMBERS:
        raise _TooManyMembers(len(pairs))
    found = dict(pairs)
    if len(found) != len(pairs):
        raise _NotAccepted("an object has the same key twice")
    return found


def _constant(name: str) -> Any:
    raise _NotAccepted(f"{name} is not a JSON number")


def parse_json(data: bytes) -> Any:
    """The body as the API reads JSON: UTF-8, no duplicate keys, exact numbers, no NaN."""
    return json.loads(
        data.decode("utf-8"),
        object_pairs_hook=_object,
        parse_float=Decimal,
        parse_constant=_constant,
    )


class JSONRequest(Request):
    """Reads the body as JSON whatever its content type; bad JSON is a 400 ``invalid_json``.

    Bad JSON includes bytes that are not UTF-8, arrays or objects nested too deep to
    parse, an object with the same key twice, and ``NaN`` or ``Infinity``.
    """

    async def get_json(self, force: bool = True, silent: bool = False, cache: bool = True) -> Any:
        if cache and self._cached_json[silent] is not Ellipsis:
            return self._cached_json[silent]
        data = await self.get_data(cache=cache, as_text=False)
        try:
            result = parse_json(data if isinstance(data, bytes) else data.encode())
        except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
            result = None if silent else self.on_json_loading_failed(error)
        if cache:
            self._cached_json[silent] = result
        return result

    def on_json_loading_failed(self, error: Exception) -> Any:
        if isinstance(error, _TooManyMembers):
            raise ApiError(
                422,
                "validation_error",
                "Invalid fields: body",
                [{"field": "body", "message": f"an object has more than {MAX_MEMBERS} members"}],
            )
        # In the API's words: the decoder's own messages describe its internals.
        if isinstance(error, _NotAccepted):
            reason = str(error)
        elif isinstance(error, json.JSONDecodeError):
            reason = f"malformed at line {error.lineno}, column {error.colno}"
        elif isinstance(error, UnicodeDecodeError):
            reason = f"not UTF-8 (byte {error.start})"
        elif isinstance(error, RecursionError):
            reason = "nested too deeply"
        else:
            reason = "malformed"
        raise ApiError(400, "invalid_json", f"The request body is not valid JSON: {reason}.")


def error_response(
    status: int,
    code: str,
    message: str,
    details: list[dict[str, Any]] | None = None,
    *,
    detail_count: int | None = None,
) -> Response:
    """The error body; of ``details``, the first ``MAX_DETAILS``, and how many were found."""
    error: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        error["details"] = details[:MAX_DETAILS]
        error["detail_count"] = len(details) if detail_count is None else detail_count
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
        return error_response(422, "validation_error", "The request is not valid.")
    count = cause.error_count()
    found = cause.errors(include_url=False, include_context=False, include_input=False)
    details: list[dict[str, Any]] = [
        {"field": _field(item["loc"]), "message": item["msg"]} for item in found[:MAX_DETAILS]
    ]
    fields = ", ".join(dict.fromkeys(detail["field"] for detail in details))
    more = f" and {count - len(details)} more" if count > len(details) else ""
    message = f"Invalid fields: {fields}{more}"
    return error_response(422, "validation_error", message, details, detail_count=count)


def _field(location: tuple[int | str, ...]) -> str:
    """Where a problem is, as ``a.b``; a client's own key is cut to ``MAX_FIELD`` characters."""
    field = ".".join(str(part) for part in location) or "body"
    return field if len(field) <= MAX_FIELD else field[: MAX_FIELD - 1] + "…"


def register_error_handlers(app: Quart) -> None:
    # Unhandled exceptions reach the HTTPException handler as InternalServerError: 500s are JSON.
    app.register_error_handler(RequestSchemaValidationError, _validation_error)
    app.register_error_handler(HTTPException, _http_error)
