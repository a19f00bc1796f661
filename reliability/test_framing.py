"""HTTP framing as Hypercorn serves the service: raw bytes on a socket, real processes.

- HTTP/2 is not served unless ``HTTP2=true``: ``Upgrade: h2c`` is answered in HTTP/1.1, and
  HTTP/2's preface is a 505 that closes the connection (``service.serving``).
- A request with both ``Content-Length`` and ``Transfer-Encoding`` is a 400 and its
  connection is closed: a request pipelined behind it is never served (RFC 9112 §6.1).
- What Hypercorn refuses itself (a request that is not HTTP, headers too large, an unknown
  transfer coding) is answered with the API's JSON error, not an empty body.
- Judged right and kept: an obsolete line folding is unfolded (RFC 9112 §5.2 lets a server
  replace it with spaces) and a bare LF ends a line (§2.2 lets a recipient accept it); h11
  does both, consistently, so no two readings of one request arise within the service.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from reliability.conftest import Figures, NewDatabase
from reliability.harness import serving

UPGRADE = (
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
    b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
)
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"
NEXT = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
BOTH = (
    b"POST /users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
)


async def _exchange(port: int, data: bytes, wait: float = 1.5) -> tuple[bytes, bool]:
    """Send ``data``; everything the server sent back, and whether it closed the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    received = b""
    closed = False
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), wait)
            if not chunk:
                closed = True
                break
            received += chunk
    except TimeoutError:
        pass
    writer.close()
    return received, closed


def _responses(received: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """The HTTP/1.1 responses in ``received``: status, headers, body (by Content-Length)."""
    found = []
    while received.startswith(b"HTTP/1.1 "):
        head, _, rest = received.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        found.append((int(lines[0].split()[1]), headers, rest[:length]))
        received = rest[length:]
    return found


def _error_code(body: bytes) -> str:
    code: str = json.loads(body)["error"]["code"]
    return code


async def test_framing_as_served(
    new_database: NewDatabase, tmp_path: Path, figures: Figures
) -> None:
    url = await new_database("sqlite")
    async with serving("framing", url, tmp_path, workers=1) as server:
        port = server.port
        upgrade = _responses((await _exchange(port, UPGRADE))[0])
        preface, preface_closed = await _exchange(port, PREFACE)
        both, both_closed = await _exchange(port, BOTH + NEXT)
        refusals = {
            "not http": await _exchange(port, b"GARBAGE\r\n\r\n"),
            "huge headers": await _exchange(
                port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n"
            ),
            "unknown coding": await _exchange(
                port, b"POST /users HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n"
            ),
        }
        folded = await _exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n")
        bare_lf = await _exchange(port, b"GET /healthz HTTP/1.1\nHost: x\n\n")

    figures("Upgrade: h2c", f"answered {upgrade[0][0]} in HTTP/1.1")
    preface_answers = _responses(preface)
    figures("HTTP/2 preface", f"{preface_answers[0][0]}, closed: {preface_closed}")
    both_answers = _responses(both)
    figures(
        "Content-Length with Transfer-Encoding",
        f"{[status for status, _, _ in both_answers]}, closed: {both_closed}",
    )
    [(status, _, body)] = upgrade
    assert status == 200 and json.loads(body) == {"status": "ok"}  # no 101: no HTTP/2
    [(status, headers, body)] = preface_answers
    assert (status, _error_code(body), preface_closed) == (505, "http_version_not_supported", True)
    [(status, headers, body)] = both_answers  # the pipelined GET was never served
    assert (status, _error_code(body), both_closed) == (400, "ambiguous_body_length", True)
    assert headers["connection"] == "close"
    expected = {"not http": 400, "huge headers": 431, "unknown coding": 501}
    for name, (received, closed) in refusals.items():
        [(status, headers, body)] = _responses(received)
        figures(name, f"{status} {_error_code(body)}")
        assert (status, closed) == (expected[name], True)
        assert headers["content-type"] == "application/json" and _error_code(body)
    for received, _ in (folded, bare_lf):
        assert [status for status, _, _ in _responses(received)] == [200]


@pytest.mark.parametrize("http2", ["true"])
async def test_http2_true_serves_hypercorns_http2(
    http2: str, new_database: NewDatabase, tmp_path: Path
) -> None:
    url = await new_database("sqlite")
    async with serving("framing-h2", url, tmp_path, workers=1, env={"HTTP2": http2}) as server:
        received, _ = await _exchange(server.port, UPGRADE, wait=0.5)
    assert received.startswith(b"HTTP/1.1 101 ")
