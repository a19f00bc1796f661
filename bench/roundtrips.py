"""Round trips to the database per request: counted from SQLAlchemy's events, checked on the wire.

A round trip is one exchange with the database server: the client sends, then
waits for the answer. What SQLAlchemy's asyncpg adapter over asyncpg (the
service's PostgreSQL stack) exchanges, as the wire counter below observes it:

- a statement: one exchange (Bind, Execute, Sync) once it is prepared on the
  connection; one more (Parse, Describe, Sync) when it is not in the adapter's
  prepared-statement cache of that connection (100 statements by default);
- BEGIN: one, sent by the adapter just before a transaction's first statement
  (SQLAlchemy's ``begin()`` itself sends nothing);
- COMMIT or ROLLBACK: one, when a BEGIN was sent;
- the pool's pre-ping, on the checkout of a connection that was used before:
  three (BEGIN, the empty statement ``;``, ROLLBACK: the adapter pings inside a
  transaction of its own, for pgbouncer), four the first time on a connection,
  when asyncpg prepares ``;``;
- a new connection: about a dozen (TLS request, start-up, authentication, the
  type look-ups of the JSON codecs), counted apart as ``connects``.

``count_round_trips()`` counts these from SQLAlchemy's engine and pool events
(statements, commit, rollback, checkout, check-in, reset), reading the adapter's
own state where the events cannot tell (whether a transaction is open on the
driver, whether a statement is prepared). It is exact for asyncpg, as long as
the code talks to the database through SQLAlchemy; for other drivers it counts
each statement, commit, rollback and ping as one. It counts every engine of the
process, like ``service.db.testing.count_queries()``.

``WireCounter`` is the check: a TCP proxy in front of the database that counts,
per connection, each time the client sends after the server has answered. Run as
a script, this module serves requests in-process through the ``service`` it finds
on ``sys.path`` (``bench/ledger.py`` runs it once per checkout), through the
proxy, and prints both counts per request as JSON:

    PYTHONPATH=<checkout> python bench/roundtrips.py --url postgresql+asyncpg://.../db

The script imports nothing else of this repository, so that the checkout on
``PYTHONPATH`` provides ``service``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import event, make_url
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import ConnectionPoolEntry, Pool

__all__ = ["RoundTrips", "WireCounter", "count_round_trips"]

# Kept in the pool record's ``info``, which lives as long as its DBAPI connection.
_NEW = "bench.roundtrips.new"  # made and not checked out yet: SQLAlchemy does not ping it
_PING_PREPARED = "bench.roundtrips.ping_prepared"  # ";" prepared at the last check-in seen
_PING = ";"  # what SQLAlchemy's asyncpg adapter sends to ping
# Set by the layer (service.db._server, since issue 12) when it checks an idle pooled
# connection at checkout: one round trip. A literal, so that the script imports no checkout.
_LAYER_PINGED = "service.db.pinged"


def _short(statement: str, width: int = 90) -> str:
    text = " ".join(statement.split())
    return text if len(text) <= width else text[: width - 3] + "..."


@dataclass
class RoundTrips:
    """The exchanges counted so far, in order; ``count`` is the number of round trips."""

    exchanges: list[str] = field(default_factory=list)
    connects: int = 0
    """New DBAPI connections made; their hand-shakes are not in ``count``."""
    checkouts: list[int] = field(default_factory=list)
    """Which pooled connection each checkout got (an id per pool record), in order."""

    @property
    def count(self) -> int:
        return len(self.exchanges)

    def clear(self) -> None:
        self.exchanges.clear()
        self.connects = 0
        self.checkouts.clear()

    def __str__(self) -> str:
        lines = [f"{number}. {what}" for number, what in enumerate(self.exchanges, 1)]
        if self.connects:
            lines.append(f"(and {self.connects} new connection(s), not counted)")
        return "\n".join(lines)


def _asyncpg(dbapi_connection: Any) -> bool:
    # SQLAlchemy's AsyncAdapt_asyncpg_connection: its driver transaction and its cache.
    return hasattr(dbapi_connection, "_prepared_statement_cache") and hasattr(
        dbapi_connection, "_transaction"
    )


def _will_begin(dbapi_connection: Any) -> bool:
    """The adapter sends BEGIN before this statement: no driver transaction is open yet."""
    return (
        dbapi_connection._transaction is None and dbapi_connection.isolation_level != "autocommit"
    )


def _in_asyncpg_cache(dbapi_connection: Any, statement: str) -> bool:
    # asyncpg's own statement cache (keyed by query, record class and codec flag).
    cache = dbapi_connection._connection._stmt_cache
    return any(state.query == statement for state in cache.iter_statements())


def _prepared(dbapi_connection: Any, statement: str, executemany: bool) -> bool:
    if executemany:  # asyncpg's executemany() goes through asyncpg's own statement cache
        return _in_asyncpg_cache(dbapi_connection, statement)
    cache = dbapi_connection._prepared_statement_cache
    return cache is not None and statement in cache


@contextmanager
def count_round_trips() -> Iterator[RoundTrips]:
    """Count the round trips every engine of the process makes inside the block."""
    trips = RoundTrips()
    log = trips.exchanges.append

    def on_connect(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        trips.connects += 1
        record.info[_NEW] = True
        record.info[_PING_PREPARED] = False

    def on_checkin(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        if dbapi_connection is not None and _asyncpg(dbapi_connection):
            record.info[_PING_PREPARED] = _in_asyncpg_cache(dbapi_connection, _PING)

    def on_engine_connect(connection: Connection) -> None:
        # A Connection is one pool checkout; a pre-pinging pool has pinged by now,
        # unless the DBAPI connection was made by this very checkout.
        info = connection.info
        trips.checkouts.append(id(info))
        new = info.pop(_NEW, False)
        prepared = info.pop(_PING_PREPARED, True)  # unseen: assume pinged before
        if info.pop(_LAYER_PINGED, False):  # the layer's check of an idle connection
            log("ping: SELECT 1 (an idle connection, checked by the layer)")
            return
        if new or not getattr(connection.engine.pool, "_pre_ping", False):
            return
        dbapi_connection: Any = connection.connection.dbapi_connection
        if not _asyncpg(dbapi_connection):
            log("pre-ping")
            return
        in_transaction = dbapi_connection.isolation_level != "autocommit"
        if in_transaction:
            log("pre-ping: BEGIN")
        if not prepared:
            log(f"pre-ping: prepare {_PING}")
        log(f"pre-ping: {_PING}")
        if in_transaction:
            log("pre-ping: ROLLBACK")

    def on_execute(
        connection: Connection,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> None:
        dbapi_connection: Any = connection.connection.dbapi_connection
        many = " (executemany)" if executemany else ""
        if _asyncpg(dbapi_connection):
            if _will_begin(dbapi_connection):
                log("BEGIN")
            if not _prepared(dbapi_connection, statement, executemany):
                log(f"prepare: {_short(statement)}")
        log(_short(statement) + many)

    def on_end(name: str) -> Callable[[Connection], None]:
        def end(connection: Connection) -> None:
            dbapi_connection: Any = connection.connection.dbapi_connection
            if not _asyncpg(dbapi_connection) or dbapi_connection._transaction is not None:
                log(name)

        return end

    def on_reset(dbapi_connection: Any, record: ConnectionPoolEntry, state: Any) -> None:
        # Returned to the pool with a transaction still open: the pool rolls it back.
        if _asyncpg(dbapi_connection) and dbapi_connection._transaction is not None:
            log("ROLLBACK (the pool's reset on return)")

    listeners: list[tuple[Any, str, Callable[..., None]]] = [
        (Pool, "connect", on_connect),
        (Pool, "checkin", on_checkin),
        (Pool, "reset", on_reset),
        (Engine, "engine_connect", on_engine_connect),
        (Engine, "before_cursor_execute", on_execute),
        (Engine, "commit", on_end("COMMIT")),
        (Engine, "rollback", on_end("ROLLBACK")),
    ]
    for target, name, listener in listeners:
        event.listen(target, name, listener)
    try:
        yield trips
    finally:
        for target, name, listener in listeners:
            event.remove(target, name, listener)


class WireCounter:
    """A TCP proxy to ``host:port`` counting exchanges: client sends after the server answered."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.exchanges = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._pumps: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        """Listen on a free port of 127.0.0.1, and return it."""
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        listening: int = self._server.sockets[0].getsockname()[1]
        return listening

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for pump in self._pumps:
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)

    async def _relay(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        self.connections += 1
        server_in, server_out = await asyncio.open_connection(self.host, self.port)
        last = {"client": False}

        async def pump(
            source: asyncio.StreamReader, sink: asyncio.StreamWriter, from_client: bool
        ) -> None:
            try:
                while data := await source.read(65536):
                    if from_client and not last["client"]:
                        self.exchanges += 1
                    last["client"] = from_client
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                sink.close()

        pumps = [
            asyncio.ensure_future(pump(client_in, server_out, True)),
            asyncio.ensure_future(pump(server_in, client_out, False)),
        ]
        self._pumps.update(pumps)
        await asyncio.gather(*pumps, return_exceptions=True)
        self._pumps.difference_update(pumps)


# --- the script: requests in-process, through the service on sys.path -------------------------

Calls = dict[str, Callable[[], Awaitable[Any]]]


async def _count(calls: Calls, wire: WireCounter, warmups: int, samples: int) -> dict[str, Any]:
    """Each call ``warmups`` times, then ``samples`` times counted, by the events and the wire."""
    counted: dict[str, Any] = {}
    for name, call in calls.items():
        for _ in range(warmups):
            await call()
        events, exchanges, connects, log = [], [], [], ""
        for _ in range(samples):
            before = wire.exchanges
            with count_round_trips() as trips:
                response = await call()
            if response.status_code >= 400:
                raise RuntimeError(f"{name}: {response.status_code}")
            events.append(trips.count)
            exchanges.append(wire.exchanges - before)
            connects.append(trips.connects)
            log = str(trips)
        counted[name] = {"events": events, "wire": exchanges, "connects": connects, "log": log}
    return counted


async def _service(wire: WireCounter, warmups: int, samples: int) -> dict[str, Any]:
    """The ledger's GET, deposit and transfer for a new user, through the Quart test client."""
    import service
    from service.app import app  # built from DATABASE_URL, as Hypercorn serves it

    async with app.test_app():
        client = app.test_client()
        email = f"roundtrips-{os.getpid()}-{id(client)}@example.com"
        user = await client.post("/users", json={"name": "Round trips", "email": email})
        if user.status_code != 201:
            raise RuntimeError(f"POST /users: {user.status_code} {await user.get_data()!r}")
        headers = {"Authorization": f"Bearer {(await user.get_json())['token']}"}
        accounts = []
        for name in ("a", "b"):
            made = await client.post(
                "/accounts", json={"name": name, "currency": "USD"}, headers=headers
            )
            accounts.append((await made.get_json())["id"])
        funded = await client.post(
            f"/accounts/{accounts[0]}/deposits", json={"amount": 10**9}, headers=headers
        )
        if funded.status_code != 201:
            raise RuntimeError(f"deposit: {funded.status_code} {await funded.get_data()!r}")
        transfer = {"from_account_id": accounts[0], "to_account_id": accounts[1], "amount": 1}
        calls: Calls = {
            "GET /accounts/{id}": lambda: client.get(f"/accounts/{accounts[0]}", headers=headers),
            "deposit": lambda: client.post(
                f"/accounts/{accounts[0]}/deposits",
                json={"amount": 100, "description": "bench"},
                headers=headers,
            ),
            "transfer": lambda: client.post("/transfers", json=transfer, headers=headers),
        }
        counted = await _count(calls, wire, warmups, samples)
    return {"origin": str(service.__file__), "requests": counted}


async def _measure(args: argparse.Namespace) -> dict[str, Any]:
    target = make_url(args.url)
    wire = WireCounter(target.host or "127.0.0.1", target.port or 5432)
    port = await wire.start()
    proxied = target.set(port=port).render_as_string(hide_password=False)
    os.environ["DATABASE_URL"] = proxied  # what the app reads when it is built
    os.environ.setdefault("RATE_LIMIT_ENABLED", "false")
    try:
        return await _service(wire, args.warmups, args.samples)
    finally:
        await wire.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", required=True, help="a migrated PostgreSQL database")
    parser.add_argument("--warmups", type=int, default=3)
    parser.add_argument("--samples", type=int, default=5)
    args = parser.parse_args(argv)
    here = Path(__file__).resolve().parent
    # Run as a script, this directory heads sys.path: nothing here may shadow what the
    # checkout on PYTHONPATH imports.
    sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != here]
    results = asyncio.run(_measure(args))
    print("ROUNDTRIPS " + json.dumps(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
