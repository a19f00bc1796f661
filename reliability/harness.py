"""The service under test, served by Hypercorn, and a client for it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

from bench.harness import Server

__all__ = ["client", "serving"]


@asynccontextmanager
async def serving(
    name: str,
    url: str,
    log_dir: Path,
    *,
    workers: int = 2,
    env: dict[str, str] | None = None,
    options: tuple[str, ...] = (),
    target: str = "service.app:app",
) -> AsyncIterator[Server]:
    """The service under Hypercorn, ready (``/readyz`` is 200); stopped at the end if it runs."""
    server = Server(
        name,
        target,
        {"DATABASE_URL": url, **(env or {})},
        log_dir,
        workers=workers,
        options=options,
    )
    try:
        await asyncio.to_thread(server.wait_ready, "/readyz")
        yield server
    finally:
        await asyncio.to_thread(server.stop)


def client(server: Server, connections: int = 32) -> httpx.AsyncClient:
    # Pooled connections are dropped before Hypercorn's keep-alive timeout (5 s) can close them:
    # with both at 5 s, a request sent as the server closes its connection is lost in flight.
    limits = httpx.Limits(
        max_connections=connections, max_keepalive_connections=connections, keepalive_expiry=2
    )
    return httpx.AsyncClient(base_url=server.base, limits=limits, timeout=60)
