"""What every request and response goes through: request ids, JSON bodies only, safe headers.

- ``X-Request-ID``: the client's value when it is sane (1-128 visible ASCII
  characters), else a fresh one; on every response, in the access log and in
  the logs of money movements.
- A request body whose ``Content-Type`` is not JSON (``application/json``, with
  any parameters, or an ``application/*+json`` type) is a 415
  ``unsupported_media_type``, before anything reads it: a web page cannot make a
  browser send a "simple" cross-site ``text/plain`` POST that the API accepts.
- ``Cache-Control: no-store`` on the API's answers (tokens and balances must not
  sit in a cache), ``X-Content-Type-Options: nosniff`` on all of them, and
  ``Strict-Transport-Security`` when ``HSTS_MAX_AGE`` is set.
"""

from __future__ import annotations

import re
import time
import uuid

from quart import Quart, Response, current_app, g, request
from werkzeug.datastructures import Headers

from service.errors import ApiError

__all__ = ["init_app", "request_id"]

_SANE_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")
# Paths that serve files meant to be cached (the docs' scripts and styles).
_CACHEABLE_PREFIX = "/docs/assets/"


def request_id() -> str:
    """This request's id: the client's ``X-Request-ID`` if sane, else a generated one."""
    found: str | None = g.get("request_id")
    if found is None:
        given = _headers(request.headers).get("x-request-id", "")
        found = given if _SANE_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        g.request_id = found
    return found


def _headers(headers: Headers) -> dict[str, str]:
    """The few request headers read here, in one pass.

    A werkzeug lookup of an absent header raises and catches an exception, the
    costliest thing these hooks would otherwise do on every request.
    """
    found = {}
    for name, value in headers.items():
        lowered = name.lower()
        if lowered in _READ:
            found[lowered] = value
    return found


_READ = frozenset({"x-request-id", "content-type", "content-length", "transfer-encoding"})


def _is_json(mimetype: str) -> bool:
    return mimetype == "application/json" or (
        mimetype.startswith("application/") and mimetype.endswith("+json")
    )


def _refused_media_type(headers: dict[str, str]) -> bool:
    length = headers.get("content-length")
    if length is not None and length.strip() == "0":
        return False  # no body, whatever it claims to be
    if "content-type" in headers:
        return not _is_json(request.mimetype)
    # A body without a declared type.
    return length is not None or "chunked" in headers.get("transfer-encoding", "").lower()


async def _before_request() -> None:
    g.started = time.perf_counter()
    headers = _headers(request.headers)
    given = headers.get("x-request-id", "")
    g.request_id = given if _SANE_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
    if _refused_media_type(headers):
        raise ApiError(
            415,
            "unsupported_media_type",
            "The request body must be JSON, sent with `Content-Type: application/json`.",
        )


async def _after_request(response: Response) -> Response:
    headers = response.headers
    headers["X-Request-ID"] = request_id()
    headers["X-Content-Type-Options"] = "nosniff"
    if not request.path.startswith(_CACHEABLE_PREFIX):
        headers["Cache-Control"] = "no-store"
    max_age: int = current_app.config["HSTS_MAX_AGE"]
    if max_age > 0:
        headers["Strict-Transport-Security"] = f"max-age={max_age}; includeSubDomains"
    return response


def init_app(app: Quart) -> None:
    """Register the hooks: after the layer's (which must see the request first and the
    response last), before the blueprints', so authentication sees the request id."""
    app.before_request(_before_request)
    app.after_request(_after_request)
