"""The ceiling: a bare ASGI callable on Hypercorn, the same SQL in an explicit transaction
straight on the driver. No framework, no ORM: what any Python service on this server
could reach at best.

Served as ``hypercorn bench.stack_apps.ceiling:app``. PostgreSQL: an asyncpg pool
of ``POOL_SIZE`` connections, ``BEGIN; SELECT ...; COMMIT`` and ``BEGIN; INSERT ...
RETURNING ...; COMMIT`` (``connection.transaction()``), nothing sent when a connection
goes back to the pool. SQLite: aiosqlite
connections in autocommit mode set up as the layer's (WAL, ``synchronous=FULL``,
the busy timeout, foreign keys): one writer, whose writes queue on an
``asyncio.Lock`` (FIFO) and run ``BEGIN IMMEDIATE``, the INSERT with its rows, and
COMMIT, one hop to the connection's thread each; and 4 readers taken from a queue,
each read ``BEGIN``, the SELECT with its rows, ``COMMIT``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Awaitable, Callable
from typing import Any

import aiosqlite
import asyncpg
from sqlalchemy import make_url

from bench.stack_apps import BUSY_TIMEOUT_MS, POOL_SIZE

__all__ = ["app"]

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Row = tuple[int, str] | None

READERS = 4
_ITEM = re.compile(r"/items/(\d+)")


async def _keep(connection: asyncpg.Connection) -> None:
    """A connection returned to the pool is kept as it is: it only ever ran whole transactions.

    asyncpg's default sends ``RESET ALL`` and friends on every release, a round trip the
    other stacks do not pay.
    """


class Postgres:
    def __init__(self, url: str) -> None:
        parsed = make_url(url).set(drivername="postgresql")
        self.dsn = parsed.render_as_string(hide_password=False)
        self.pool: Any = None

    async def start(self) -> None:
        self.pool = await asyncpg.create_pool(
            self.dsn, min_size=POOL_SIZE, max_size=POOL_SIZE, reset=_keep
        )

    async def stop(self) -> None:
        await self.pool.close()

    async def read(self, item_id: int) -> Row:
        async with self.pool.acquire() as connection, connection.transaction():
            row = await connection.fetchrow("SELECT id, name FROM items WHERE id = $1", item_id)
        return None if row is None else (row[0], row[1])

    async def write(self, name: str) -> Row:
        async with self.pool.acquire() as connection, connection.transaction():
            row = await connection.fetchrow(
                "INSERT INTO items (name) VALUES ($1) RETURNING id, name", name
            )
        return (row[0], row[1])


class Sqlite:
    def __init__(self, url: str) -> None:
        self.path = make_url(url).database or ""
        self.readers: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()
        self.writer: aiosqlite.Connection | None = None
        self.write_lock = asyncio.Lock()

    async def _connect(self) -> aiosqlite.Connection:
        connection = await aiosqlite.connect(self.path, isolation_level=None)
        for pragma in (
            f"busy_timeout = {BUSY_TIMEOUT_MS}",
            "journal_mode = WAL",
            "synchronous = FULL",
            "foreign_keys = ON",
        ):
            await connection.execute(f"PRAGMA {pragma}")
        return connection

    async def start(self) -> None:
        self.writer = await self._connect()
        for _ in range(READERS):
            self.readers.put_nowait(await self._connect())

    async def stop(self) -> None:
        connections = [self.readers.get_nowait() for _ in range(self.readers.qsize())]
        for connection in [*connections, *([self.writer] if self.writer else [])]:
            await connection.close()

    async def read(self, item_id: int) -> Row:
        connection = await self.readers.get()
        try:
            await connection.execute("BEGIN")
            rows = await connection.execute_fetchall(
                "SELECT id, name FROM items WHERE id = ?", (item_id,)
            )
            await connection.execute("COMMIT")
        finally:
            self.readers.put_nowait(connection)
        row = next(iter(rows), None)
        return None if row is None else (row[0], row[1])

    async def write(self, name: str) -> Row:
        assert self.writer is not None
        async with self.write_lock:
            await self.writer.execute("BEGIN IMMEDIATE")
            try:
                rows = await self.writer.execute_fetchall(
                    "INSERT INTO items (name) VALUES (?) RETURNING id, name", (name,)
                )
                await self.writer.execute("COMMIT")
            except BaseException:
                await self.writer.execute("ROLLBACK")
                raise
        row = next(iter(rows))
        return (row[0], row[1])


def _database() -> Postgres | Sqlite:
    url = os.environ["DATABASE_URL"]
    return Sqlite(url) if url.startswith("sqlite") else Postgres(url)


database = _database()


async def _respond(send: Send, status: int, body: object) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(payload))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


async def _body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def _item(row: tuple[int, str]) -> dict[str, object]:
    return {"id": row[0], "name": row[1]}


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await database.start()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await database.stop()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    method, path = scope["method"], scope["path"]
    if method == "GET" and path == "/nodb":
        await _respond(send, 200, {"ok": True})
        return
    found = _ITEM.fullmatch(path)
    if method == "GET" and found:
        row = await database.read(int(found.group(1)))
        if row is None:
            await _respond(send, 404, {"detail": "No such item."})
        else:
            await _respond(send, 200, _item(row))
        return
    if method == "POST" and path == "/items":
        data = json.loads(await _body(receive))
        made = await database.write(data["name"])
        assert made is not None
        await _respond(send, 201, _item(made))
        return
    await _respond(send, 404, {"detail": "Not found."})
