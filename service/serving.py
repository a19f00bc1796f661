"""Hypercorn as the service runs it: HTTP/1.1 only (unless ``HTTP2=true``), and Hypercorn's
own refusals (400, 431, 501...) in the API's JSON instead of an empty body.

Hypercorn 0.18 serves HTTP/2 on any cleartext connection that asks for it (``Upgrade: h2c``,
or the prior-knowledge preface) and has no setting to stop it, nor one to bound how many
streams a client may open and reset (CVE-2023-44487, "rapid reset"): each stream starts a
handler, and its reset costs the client nothing. Measured on this service, one such client
took another user's p50 from 7 ms to 1.3 s. So, by default:

- ``Upgrade: h2c`` is ignored (RFC 9110 §7.8 lets a server ignore an upgrade): the request is
  answered in HTTP/1.1, like any other;
- the preface ``PRI * HTTP/2.0`` reaches the app as a request, and ``service.guard`` answers
  it 505 and closes the connection;
- over TLS (Hypercorn's own ``--certfile``), ALPN offers ``http/1.1`` only.

``HTTP2=true`` restores Hypercorn's HTTP/2 as it is, for a deployment behind a proxy that
bounds resets itself (nginx, Envoy and HAProxy do since their 2023 releases).

These replace two methods of Hypercorn's ``H11Protocol``, which no setting reaches: checked
against the installed Hypercorn when ``configure`` runs, which fails loudly if they moved.
"""

from __future__ import annotations

import inspect
from typing import Any

import h11
from hypercorn.config import Config
from hypercorn.protocol.h11 import H11Protocol

from service.guard import error_body, error_headers

__all__ = ["configure", "serves_http2"]

_ORIGINAL_CHECK = H11Protocol.__dict__.get("_check_protocol")
_ORIGINAL_ERROR = H11Protocol.__dict__.get("_send_error_response")
_ALPN_BOTH = ["h2", "http/1.1"]
_ALPN_HTTP1 = ["http/1.1"]
_state = {"http2": True}
_MESSAGES = {
    400: ("bad_request", "The request is not valid HTTP/1.1."),
    413: ("request_entity_too_large", "The request is too large."),
    414: ("uri_too_long", "The request's target is too long."),
    431: ("request_header_fields_too_large", "The request's headers are too large."),
    501: ("not_implemented", "The request uses an HTTP feature this server does not serve."),
    505: ("http_version_not_supported", "This HTTP version is not served; use HTTP/1.1."),
}


def serves_http2() -> bool:
    return _state["http2"]


def configure(*, http2: bool) -> None:
    """Serve HTTP/2 only if ``http2``; answer Hypercorn's own refusals in JSON. Idempotent."""
    if _ORIGINAL_CHECK is None or _ORIGINAL_ERROR is None or not _expected_signatures():
        raise RuntimeError(
            "This Hypercorn's H11Protocol has no _check_protocol(event) or "
            "_send_error_response(status_code): service.serving was written against "
            "Hypercorn 0.18 and must be updated for this version."
        )
    _state["http2"] = http2
    H11Protocol._check_protocol = _check_protocol  # type: ignore[method-assign]
    H11Protocol._send_error_response = _send_error_response  # type: ignore[method-assign]
    Config.alpn_protocols = list(_ALPN_BOTH if http2 else _ALPN_HTTP1)


def _expected_signatures() -> bool:
    assert _ORIGINAL_CHECK is not None and _ORIGINAL_ERROR is not None
    check = list(inspect.signature(_ORIGINAL_CHECK).parameters)
    error = list(inspect.signature(_ORIGINAL_ERROR).parameters)
    return check == ["self", "event"] and error == ["self", "status_code"]


async def _check_protocol(self: H11Protocol, event: h11.Request) -> None:
    if _state["http2"]:
        assert _ORIGINAL_CHECK is not None
        await _ORIGINAL_CHECK(self, event)
    # Else nothing: no upgrade, no switch to HTTP/2 on its preface; see the module's docstring.


async def _send_error_response(self: H11Protocol, status_code: int) -> None:
    code, message = _MESSAGES.get(status_code, ("bad_request", "The request is not valid."))
    body = error_body(code, message)
    headers: list[tuple[bytes, bytes]] = [
        *error_headers(body, (b"connection", b"close")),
        *self.config.response_headers("h11"),
    ]
    send: Any = self._send_h11_event
    await send(h11.Response(status_code=status_code, headers=headers))
    await send(h11.Data(data=body))
    await send(h11.EndOfMessage())
