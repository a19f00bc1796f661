"""Read replicas: read-only units read from a replica that has their caller's writes.

A real primary and a real streaming replica (``tests.replication``); lag is made
by pausing the replica's replay. A read that the replica served is told apart
from one the primary served by a row written to the primary behind the app's
back while replay is paused: the replica does not have it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import pytest
from quart import Quart, request
from quart.typing import ResponseReturnValue
from quart.typing import TestClientProtocol as Client
from redis.asyncio import Redis
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.roundtrips import WireCounter
from service.db import ReplicaStats, caller, read_from_primary, unit_of_work
from service.db._causal import HEADER
from service.db._replica_start import CausalStore
from service.db._replicas import format_position
from service.db.quart import Database
from tests.db.models import Widget
from tests.replication import CAUSAL_REDIS_URL, Replication, create_tables

pytestmark = pytest.mark.service_committing

Serve = Callable[..., Awaitable[tuple[Client, Quart, Database]]]


def _app(config: dict[str, Any]) -> tuple[Quart, Database]:
    """A bare app on the layer: a caller named by ``X-Caller``, widgets written and read."""
    app = Quart(__name__)
    app.config.update(config)
    db = Database(app)

    @app.before_request
    async def name_the_caller() -> None:
        key = request.headers.get("X-Caller")
        if key:
            await caller(key)

    @app.post("/widgets")
    async def create() -> ResponseReturnValue:
        widget = await Widget.create(name=(await request.get_json())["name"])
        return {"id": widget.id}, 201

    @app.get("/widgets")
    async def names() -> ResponseReturnValue:
        widgets = await Widget.query.order_by(Widget.name).all()
        return {"names": [widget.name for widget in widgets]}

    @app.get("/widgets/fresh")
    async def fresh_names() -> ResponseReturnValue:
        """Reads, then asks for the primary and reads again."""
        before = [widget.name for widget in await Widget.query.order_by(Widget.name).all()]
        moved = await read_from_primary()
        after = [widget.name for widget in await Widget.query.order_by(Widget.name).all()]
        return {"before": before, "moved": moved, "after": after}

    @app.get("/nodb")
    async def no_database() -> ResponseReturnValue:
        return {"ok": True}

    @app.post("/widgets/then-read")
    async def create_then_read() -> ResponseReturnValue:
        """Writes in a unit of its own, then reads in a read-only one, within one request.

        Each is given the app's engine: a unit in a child task otherwise uses the first
        serving app's (the suite's here).
        """
        name = (await request.get_json())["name"]
        await asyncio.create_task(unit_of_work(bind=db.engine)(_create)(name))
        read = unit_of_work(readonly=True, bind=db.engine)(_read_names)
        return {"names": await asyncio.create_task(read())}, 201

    return app, db


async def _create(name: str) -> None:
    await Widget.create(name=name)


async def _read_names() -> list[str]:
    return [widget.name for widget in await Widget.query.order_by(Widget.name).all()]


@pytest.fixture
async def serve(replication: Replication, primary_engine: AsyncEngine) -> AsyncIterator[Serve]:
    await create_tables(primary_engine, Widget.__table__)
    await asyncio.to_thread(replication.wait_replayed)
    async with AsyncExitStack() as stack:

        async def start(**config: Any) -> tuple[Client, Quart, Database]:
            app, db = _app(replication.config(**config))
            test_app = app.test_app()
            await test_app.startup()
            stack.push_async_callback(test_app.shutdown)
            return app.test_client(), app, db

        yield start


async def _names(client: Client, **headers: str) -> list[str]:
    response = await client.get("/widgets", headers=headers)
    assert response.status_code == 200
    names: list[str] = (await response.get_json())["names"]
    return names


async def _behind_the_apps_back(engine: AsyncEngine, name: str) -> None:
    async with engine.connect() as connection:
        await connection.execute(insert(Widget).values(name=name, size=0))


async def _stats_of(app: Quart, db: Database) -> ReplicaStats:
    async with app.app_context():
        stats = db.replica_stats
    assert stats is not None
    return stats


async def test_a_read_goes_to_a_replica_in_rotation(
    serve: Serve, replication: Replication, primary_engine: AsyncEngine
) -> None:
    client, app, db = await serve()
    await _behind_the_apps_back(primary_engine, "replayed")
    await asyncio.to_thread(replication.wait_replayed)
    await asyncio.sleep(0.2)  # a poll or two: the poller knows the replica has it
    await asyncio.to_thread(replication.replica.pause_replay)
    await _behind_the_apps_back(primary_engine, "not replayed")

    assert await _names(client) == ["replayed"]  # the replica's view
    stats = await _stats_of(app, db)
    assert stats.reads[replication_name(replication)] >= 1


def replication_name(replication: Replication) -> str:
    return f"127.0.0.1:{replication.replica.port}/replicated"


async def test_a_client_sending_its_token_back_reads_its_write_while_the_replica_lags(
    serve: Serve, replication: Replication
) -> None:
    client, _, _ = await serve()
    await asyncio.to_thread(replication.replica.pause_replay)

    created = await client.post("/widgets", json={"name": "mine"})
    token = created.headers[HEADER]

    assert created.status_code == 201
    assert await _names(client, **{HEADER: token}) == ["mine"]
    assert await _names(client) == []  # no token, no caller: the lagging replica may answer


async def test_a_caller_reads_its_write_through_another_app_that_shares_only_redis(
    serve: Serve, replication: Replication
) -> None:
    writer, _, _ = await serve()
    reader, _, _ = await serve()  # engines, pools and poller of its own: another host
    await asyncio.to_thread(replication.replica.pause_replay)

    created = await writer.post("/widgets", json={"name": "alice's"}, headers={"X-Caller": "a1"})

    assert created.status_code == 201
    assert await _names(reader, **{"X-Caller": "a1"}) == ["alice's"]
    assert await _names(reader, **{"X-Caller": "b1"}) == []  # another caller: the replica


async def test_the_position_is_kept_in_redis_for_the_ttl_and_never_lowered() -> None:
    redis = Redis.from_url(CAUSAL_REDIS_URL)
    store = CausalStore(redis, ttl=30, prefix="test.position:")
    try:
        await redis.delete("test.position:c")
        await store.record("c", 0x2_0000_0010)
        await store.record("c", 0x1_FFFF_FFFF)  # an older write, recorded late

        assert await store.get("c") == 0x2_0000_0010
        assert 29_000 < await redis.pttl("test.position:c") <= 30_000
        assert await store.get("never-wrote") is None
    finally:
        await redis.delete("test.position:c")
        await store.close()


async def test_a_replica_behind_by_more_than_the_maximum_lag_leaves_the_rotation_and_rejoins(
    serve: Serve, replication: Replication, primary_engine: AsyncEngine
) -> None:
    client, app, db = await serve(DATABASE_REPLICA_MAX_LAG=0.3)
    name = replication_name(replication)
    await asyncio.to_thread(replication.replica.pause_replay)
    await _behind_the_apps_back(primary_engine, "while paused")
    await asyncio.sleep(0.8)

    stats = await _stats_of(app, db)
    assert stats.in_rotation[name] is False
    assert await _names(client) == ["while paused"]  # the primary's view
    assert stats.fallbacks["unavailable"] >= 1

    await asyncio.to_thread(replication.replica.resume_replay)
    await asyncio.sleep(0.5)
    assert stats.in_rotation[name] is True
    served = stats.reads[name]
    assert await _names(client) == ["while paused"]
    assert stats.reads[name] == served + 1


async def test_a_read_on_a_killed_replica_is_answered_from_the_primary_and_it_rejoins(
    serve: Serve, replication: Replication, primary_engine: AsyncEngine
) -> None:
    client, app, db = await serve()
    name = replication_name(replication)
    await _names(client)  # a pooled connection to the replica, used a moment ago
    await _behind_the_apps_back(primary_engine, "before the kill")

    await asyncio.to_thread(replication.replica.kill)
    answers = [await client.get("/widgets") for _ in range(10)]

    assert {answer.status_code for answer in answers} == {200}
    assert (await answers[-1].get_json())["names"] == ["before the kill"]
    stats = await _stats_of(app, db)
    assert stats.in_rotation[name] is False

    await asyncio.to_thread(replication.restart_replica)
    for _ in range(100):
        if stats.in_rotation[name]:
            break
        await asyncio.sleep(0.1)
    assert stats.in_rotation[name] is True


async def test_a_unit_asked_to_read_from_the_primary_reads_there_from_then_on(
    serve: Serve, replication: Replication, primary_engine: AsyncEngine
) -> None:
    client, _, _ = await serve()
    await asyncio.sleep(0.2)
    await asyncio.to_thread(replication.replica.pause_replay)
    await _behind_the_apps_back(primary_engine, "newer than the replica")

    answer = await (await client.get("/widgets/fresh")).get_json()

    assert answer == {"before": [], "moved": True, "after": ["newer than the replica"]}


async def test_a_malformed_token_is_ignored(serve: Serve) -> None:
    client, _, _ = await serve()

    assert await _names(client, **{HEADER: "not a position"}) == []


async def test_a_token_no_replica_has_reached_sends_the_read_to_the_primary(
    serve: Serve, replication: Replication, primary_engine: AsyncEngine
) -> None:
    client, app, db = await serve()
    await asyncio.sleep(0.2)
    await asyncio.to_thread(replication.replica.pause_replay)
    await _behind_the_apps_back(primary_engine, "written")
    ahead = format_position(replication.position(replication.primary))

    assert await _names(client, **{HEADER: ahead}) == ["written"]
    assert (await _stats_of(app, db)).fallbacks["behind"] == 1


async def test_the_choice_of_a_replica_costs_no_round_trip_and_a_write_costs_one(
    replication: Replication, primary_engine: AsyncEngine
) -> None:
    """Exchanges on the wire, through proxies in front of each server (``WireCounter``).

    The poller polls once, at start (a poll interval longer than the test); the
    pool has one connection per server, warmed up, so every request reuses a
    connection that has its statements prepared.
    """
    await create_tables(primary_engine, Widget.__table__)
    await asyncio.to_thread(replication.wait_replayed)
    primary = WireCounter("127.0.0.1", replication.primary.port)
    replica = WireCounter("127.0.0.1", replication.replica.port)
    primary_port, replica_port = await primary.start(), await replica.start()
    settings = {
        "DATABASE_URL": replication.primary_url.replace(
            f":{replication.primary.port}/", f":{primary_port}/"
        ),
        "DATABASE_POOL_SIZE": 1,
        "DATABASE_MAX_OVERFLOW": 0,
        "DATABASE_PGBOUNCER": False,  # the private cluster is reached directly, in any run
    }
    with_replica = {
        **settings,
        "DATABASE_REPLICA_URLS": replication.replica_url.replace(
            f":{replication.replica.port}/", f":{replica_port}/"
        ),
        "DATABASE_CAUSAL_REDIS_URL": CAUSAL_REDIS_URL,
        "DATABASE_REPLICA_POLL_INTERVAL": 20,
        "DATABASE_CAUSAL_TTL": 1200,
    }
    try:
        plain = await _exchanges(settings, primary, replica)
        routed = await _exchanges(with_replica, primary, replica)
    finally:
        await primary.close()
        await replica.close()

    assert plain["get"] == (plain["get"][0], 0)
    assert routed["get"] == (0, plain["get"][0])  # the same exchanges, on the replica
    assert routed["post"] == (plain["post"][0] + 1, 0)  # the position after COMMIT


async def _exchanges(
    config: dict[str, Any], primary: WireCounter, replica: WireCounter
) -> dict[str, tuple[int, int]]:
    app, _ = _app(config)
    counted: dict[str, tuple[int, int]] = {}
    async with app.test_app():
        client = app.test_client()
        for kind in ("get", "post"):
            for number in range(4):  # warm: connections made, statements prepared
                await _request(client, kind, f"warm-{kind}-{number}-{id(config)}")
            before = (primary.exchanges, replica.exchanges)
            await _request(client, kind, f"counted-{kind}-{id(config)}")
            counted[kind] = (primary.exchanges - before[0], replica.exchanges - before[1])
    return counted


async def _request(client: Client, kind: str, name: str) -> None:
    if kind == "get":
        response = await client.get("/widgets")
        assert response.status_code == 200
    else:
        response = await client.post("/widgets", json={"name": name})
        assert response.status_code == 201


async def test_an_idle_primary_after_a_segment_switch_keeps_its_replica_in_rotation(
    serve: Serve, replication: Replication
) -> None:
    """The primary's insert position then points past the new segment's page header, where
    no replay position ever is: the replica has everything all the same."""
    client, app, db = await serve(DATABASE_REPLICA_MAX_LAG=0.3)
    await asyncio.to_thread(replication.primary.sql, "SELECT pg_switch_wal()")
    await asyncio.to_thread(replication.wait_replayed)

    await asyncio.sleep(1.0)

    assert (await _stats_of(app, db)).in_rotation[replication_name(replication)] is True
    assert await _names(client, **{HEADER: await _position_after_a_write(client)}) == ["w"]


async def _position_after_a_write(client: Client) -> str:
    created = await client.post("/widgets", json={"name": "w"})
    assert created.status_code == 201
    token: str = created.headers[HEADER]
    return token


async def test_a_read_after_a_committed_write_in_the_same_request_sees_it(
    serve: Serve, replication: Replication
) -> None:
    client, _, _ = await serve()
    await asyncio.sleep(0.2)
    await asyncio.to_thread(replication.replica.pause_replay)

    response = await client.post("/widgets/then-read", json={"name": "written first"})

    assert (response.status_code, await response.get_json()) == (201, {"names": ["written first"]})


async def test_only_units_that_read_are_counted_and_where_they_read(
    serve: Serve, replication: Replication, primary_engine: AsyncEngine
) -> None:
    client, app, db = await serve()
    await asyncio.sleep(0.2)
    stats = await _stats_of(app, db)
    name = replication_name(replication)

    for _ in range(3):
        assert (await client.get("/nodb")).status_code == 200
    assert sum(stats.reads.values()) == 0
    await _names(client)
    assert dict(stats.reads) == {name: 1}

    await asyncio.to_thread(replication.replica.pause_replay)
    await _behind_the_apps_back(primary_engine, "newer")
    await client.get("/widgets/fresh")  # read on the replica, then moved to the primary
    assert (dict(stats.reads), dict(stats.fallbacks)) == ({name: 1, "primary": 1}, {"asked": 1})
