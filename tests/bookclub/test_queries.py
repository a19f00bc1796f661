"""The queries people reach for on day one, through the outsider's handlers, both ways.

Each test runs under the plugin (its writes joined to the test's transaction)
and in production (real commits), with the same outcome.
"""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.db import unit_of_work
from tests.bookclub.conftest import Serve, Stored
from tests.bookclub.models import Member, Tag, Volume

WAYS = ["plugin", pytest.param("production", marks=pytest.mark.service_committing)]


async def _volumes(
    connection: AsyncConnection | None, engine: AsyncEngine, titles: list[str], shelf: str = "open"
) -> None:
    rows = [{"title": title, "shelf": shelf, "version": 1} for title in titles]
    if connection is not None:
        await connection.execute(insert(Volume), rows)
        return
    async with engine.begin() as fresh:
        await fresh.execute(insert(Volume), rows)


@pytest.mark.parametrize("way", WAYS)
async def test_paginate_gives_items_total_and_pages(
    club: Serve, way: str, service_connection: AsyncConnection | None, plain_engine: AsyncEngine
) -> None:
    _, client = await club()
    await _volumes(service_connection, plain_engine, [f"v{n}" for n in range(5)])

    first = await (await client.get("/volumes?page=1&per_page=2")).get_json()
    last = await (await client.get("/volumes?page=3&per_page=2")).get_json()

    assert first == {"titles": ["v0", "v1"], "total": 5, "pages": 3, "has_next": True}
    assert last == {"titles": ["v4"], "total": 5, "pages": 3, "has_next": False}


@pytest.mark.parametrize("way", WAYS)
async def test_keyset_pages_neither_skip_nor_repeat_while_rows_are_added(
    club: Serve, way: str, service_connection: AsyncConnection | None, plain_engine: AsyncEngine
) -> None:
    _, client = await club()
    await _volumes(service_connection, plain_engine, ["a", "b", "c"])

    first = await (await client.get("/volumes/after")).get_json()
    await _volumes(service_connection, plain_engine, ["d"])  # added between two pages
    second = await (await client.get(f"/volumes/after?after={first['after']}")).get_json()

    assert first["titles"] == ["a", "b"]
    assert second == {"titles": ["c", "d"], "after": None}


@pytest.mark.parametrize("way", WAYS)
async def test_a_bulk_update_and_delete_through_the_query_return_their_counts(
    club: Serve, way: str, service_connection: AsyncConnection | None, plain_engine: AsyncEngine,
    stored: Stored,
) -> None:  # fmt: skip
    _, client = await club()
    await _volumes(service_connection, plain_engine, ["a", "b"], shelf="open")
    await _volumes(service_connection, plain_engine, ["c"], shelf="attic")
    for name, note in (("old", "stale"), ("older", "stale"), ("kept", "")):
        await client.post("/members", json={"name": name})  # (any write, to move on)
        async with unit_of_work():
            await Tag.create(name=name, note=note)

    shelved = await (
        await client.post("/volumes/shelve", json={"from": "open", "to": "attic"})
    ).get_json()
    deleted = await (await client.delete("/tags?note=stale")).get_json()

    assert (shelved, deleted) == ({"moved": 2}, {"deleted": 2})
    assert await stored(Volume.shelf) == ["attic", "attic", "attic"]
    assert await stored(Tag.name) == ["kept", "welcome"]


async def test_a_bulk_update_keeps_the_loaded_objects_in_step() -> None:
    async with unit_of_work():
        volume = await Volume.create(title="a", shelf="open")
        moved = await Volume.query.filter_by(shelf="open").update(shelf="attic")
        assert (moved, volume.shelf) == (1, "attic")
        deleted = await Volume.query.filter(Volume.shelf == "attic").delete()
        assert (deleted, await Volume.get(volume.id)) == (1, None)


async def test_a_bulk_change_refuses_a_limit_or_a_join() -> None:
    async with unit_of_work():
        with pytest.raises(ValueError, match="limit, an offset, a join"):
            await Volume.query.limit(1).update(shelf="x")
        with pytest.raises(ValueError, match="limit, an offset, a join"):
            await Member.query.join(Member.loans).delete()


@pytest.mark.parametrize("way", WAYS)
async def test_stream_reads_every_row_a_batch_at_a_time(
    way: str, service_connection: AsyncConnection | None, plain_engine: AsyncEngine
) -> None:
    await _volumes(service_connection, plain_engine, [f"v{n:04}" for n in range(2500)])

    async with unit_of_work(readonly=True):  # a read-only unit: on PostgreSQL, autocommit
        titles = [volume.title async for volume in Volume.query.order_by(Volume.id).stream()]

    assert titles == [f"v{n:04}" for n in range(2500)]


@pytest.mark.service_committing  # concurrent requests need connections of their own
async def test_get_or_create_under_concurrency_makes_one_row_and_answers_all(
    club: Serve, stored: Stored, service_database_url: str
) -> None:
    _, client = await club()

    responses = await asyncio.gather(
        *(client.post("/members/get-or-create", json={"name": "rush"}) for _ in range(10))
    )

    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200] * 9 + [201]
    assert await stored(Member.name) == ["rush"]


@pytest.mark.parametrize("way", WAYS)
async def test_update_or_create_makes_then_updates(way: str, stored: Stored) -> None:
    async with unit_of_work():
        made = await Tag.update_or_create({"note": "first"}, name="topic")
    async with unit_of_work():
        again = await Tag.update_or_create({"note": "second"}, name="topic")

    assert (made[1], again[1], again[0].note) == (True, False, "second")
    assert await stored(Tag.note) == ["second"]
