"""An ASGI middleware in front of the app: what is decided before Quart sees a request.

- A request with both ``Content-Length`` and ``Transfer-Encoding`` is a 400
  ``ambiguous_body_length`` and its connection is closed (RFC 9112 §6.1): a proxy in
  front that reads the other header would see another request than the service, the
  ground of request smuggling.
- Bodies being received are bounded in aggregate (``BODY_BUFFER_LIMIT`` bytes a
  process, a quarter of it for one client address): a request whose body would go
  beyond is a 503 ``server_busy`` with ``Retry-After``, before any of it is read. A body
  is counted at its declared length (at ``MAX_CONTENT_LENGTH`` when it declares none)
  from its first byte until its request is over; each one is bounded in time too
  (``BODY_TIMEOUT``), so a client that stalls bodies holds the memory for that long.
- HTTP/2's preface (``PRI * HTTP/2.0``) arriving as an HTTP/1.1 request, when HTTP/2 is
  not served (``service.serving``), is a 505 with the connection closed.

Its answers are the API's JSON errors, with the headers every answer carries.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from hypercorn.typing import ASGIReceiveCallable as Receive
from hypercorn.typing import ASGISendCallable as Send
from hypercorn.typing import HTTPResponseBodyEvent, HTTPResponseStartEvent, Scope
from pydantic_core import to_json

__all__ = ["Guard", "error_body", "error_headers"]

ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_HTTP1 = frozenset({"1.0", "1.1"})
_NO_BODY = frozenset({"GET", "HEAD", "OPTIONS"})
"""Methods whose body, if any, the service never reads: not counted when unannounced."""
ADDRESS_SHARE = 4
"""One client address may hold at most 1/ADDRESS_SHARE of the budget."""


def error_body(code: str, message: str) -> bytes:
    return to_json({"error": {"code": code, "message": message}})


def error_headers(body: bytes, *extra: tuple[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    """The headers of an answer made outside the app: as the app's own error answers."""
    return [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"cache-control", b"no-store"),
        (b"x-request-id", uuid.uuid4().hex.encode()),
        *extra,
    ]


@dataclass
class _Budget:
    limit: int
    used: int = 0
    by_address: dict[str, int] = field(default_factory=dict)

    def reserve(self, address: str, size: int) -> bool:
        held = self.by_address.get(address, 0)
        if self.used + size > self.limit or held + size > self.limit // ADDRESS_SHARE:
            return False
        self.used += size
        self.by_address[address] = held + size
        return True

    def release(self, address: str, size: int) -> None:
        self.used -= size
        left = self.by_address[address] - size
        if left:
            self.by_address[address] = left
        else:
            del self.by_address[address]


class Guard:
    """``app.asgi_app = Guard(app.asgi_app, body_limit=..., buffer_limit=...)``."""

    def __init__(self, app: ASGIApp, *, body_limit: int, buffer_limit: int) -> None:
        self.app = app
        self.body_limit = body_limit
        self.budget = _Budget(buffer_limit)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        version = scope.get("http_version", "1.1")
        if version == "2.0":  # HTTP/2's preface, read as an HTTP/1.1 request
            message = "HTTP/2 is not served here; use HTTP/1.1."
            await _refuse(send, 505, "http_version_not_supported", message)
            return
        length: bytes | None = None
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                chunked = True
        if length is not None and chunked:
            message = "A request may not carry both Content-Length and Transfer-Encoding."
            await _refuse(send, 400, "ambiguous_body_length", message)
            return
        if length is not None:
            size = min(int(length), self.body_limit) if length.isdigit() else self.body_limit
        elif chunked or (version not in _HTTP1 and scope["method"] not in _NO_BODY):
            size = self.body_limit  # HTTP/2 and 3 may send a body unannounced
        else:
            size = 0
        if not size:
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        address = client[0] if client else "unknown"
        if not self.budget.reserve(address, size):
            message = "Too many request bodies are being received; retry in a moment."
            await _refuse(send, 503, "server_busy", message, (b"retry-after", b"1"))
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.budget.release(address, size)


async def _refuse(
    send: Send, status: int, code: str, message: str, *extra: tuple[bytes, bytes]
) -> None:
    """Answer without reading the body, and close the connection (what was sent after the
    headers cannot be told from a next request)."""
    body = error_body(code, message)
    headers = error_headers(body, (b"connection", b"close"), *extra)
    start: HTTPResponseStartEvent = {
        "type": "http.response.start",
        "status": status,
        "headers": headers,
    }
    await send(start)
    await send(HTTPResponseBodyEvent(type="http.response.body", body=body, more_body=False))
