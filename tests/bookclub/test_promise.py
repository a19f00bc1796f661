"""The promise, on an outsider's app: one list of scenarios, run three ways, the same outcomes.

Each scenario is a request; its outcome is the status, the body (when JSON), and
what is stored afterwards, read through a connection that is not the app's:
the members, the tags (background tasks and jobs write them) and the entries of
the audit database. The three ways:

- **plugin**: the app's units of work join a transaction rolled back after each
  scenario (``rolled_back``, what the plugin's ``service_connection`` is);
- **production**: the same app in-process with real commits;
- **served**: the app in a Hypercorn process of its own, with real commits, its
  jobs in its own dispatcher.

Every way must give the expected outcome, so they also agree with each other.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.db.testing import rolled_back
from service.testing import TestDatabase
from tests.bookclub.conftest import AuditEntries, Serve, Stored
from tests.bookclub.models import Loan, Member, Tag, Volume

COMMITTING = pytest.mark.service_committing
TAKEN = "taken"
VOLUME = 7


@dataclass(frozen=True)
class Scenario:
    name: str
    method: str
    path: str
    body: dict[str, Any] | None
    status: int
    members: list[str]
    tags: list[str] = field(default_factory=list)
    audit: list[str] = field(default_factory=list)
    json: Any = None
    """The expected JSON body, when it is one worth comparing."""


SCENARIOS = [
    Scenario("a savepoint contains its failure", "POST", "/claims/savepoint",
             {"names": ["ann", "bob"], "duplicate": TAKEN}, 201, ["ann", "bob", TAKEN],
             json={"stored": ["ann", "bob"]}),
    Scenario("a caught failure outside a savepoint cannot end in 2xx", "POST", "/claims/caught",
             {"names": ["ann", "bob"], "duplicate": TAKEN}, 409, [TAKEN]),
    Scenario("SQLAlchemy's begin_nested contains it too", "POST", "/claims/begin-nested",
             {"names": ["ann", "bob"], "duplicate": TAKEN}, 201, ["ann", "bob", TAKEN]),
    Scenario("a failure caught inside its savepoint fails the request", "POST",
             "/claims/caught-inside-savepoint", {"names": ["ann"], "duplicate": TAKEN}, 500,
             [TAKEN]),
    Scenario("get_or_create finds, and keeps the earlier write", "POST",
             "/members/get-or-create", {"name": TAKEN, "also": "cid"}, 200, ["cid", TAKEN]),
    Scenario("get_or_create makes", "POST", "/members/get-or-create", {"name": "dee"}, 201,
             ["dee", TAKEN]),
    Scenario("a GET streams rows with a server-side cursor", "GET", "/members/streamed-read",
             None, 200, [TAKEN], json={"names": [TAKEN]}),
    Scenario("a GET that writes is refused", "GET", "/members/write-in-get", None, 500, [TAKEN]),
    Scenario("a row changed under an update is a conflict", "PATCH",
             f"/volumes/{VOLUME}/changed-under", {}, 409, [TAKEN]),
    Scenario("bind= another database is a unit of its own", "POST", "/audit", {"what": "eve"},
             201, ["eve", TAKEN], audit=["eve"]),
    Scenario("...committed when its block ends, whatever the request does", "POST", "/audit",
             {"what": "fay", "fail": True}, 422, [TAKEN], audit=["fay"]),
    Scenario("a background task sees what its request committed", "POST",
             "/members/background", {"name": "gus"}, 201, ["gus", TAKEN], tags=["member:gus"]),
    Scenario("...and runs after a request that rolled back, seeing nothing", "POST",
             "/members/background", {"name": "hal", "fail": True}, 422, [TAKEN],
             tags=["missing:hal"]),
    Scenario("a job runs after its request committed", "POST", "/members/welcome",
             {"name": "ivy"}, 202, ["ivy", TAKEN], tags=["welcomed:ivy"]),
    Scenario("no job after a request that rolled back", "POST", "/members/welcome",
             {"name": "jon", "fail": True}, 422, [TAKEN]),
    Scenario("a bulk update through the query", "POST", "/volumes/shelve",
             {"from": "open", "to": "closed"}, 200, [TAKEN], json={"moved": 1}),
    Scenario("a page of a query, with its total", "GET", "/volumes?page=1&per_page=1", None,
             200, [TAKEN],
             json={"titles": ["Kept"], "total": 1, "pages": 1, "has_next": False}),
    Scenario("a keyset page", "GET", "/volumes/after", None, 200, [TAKEN],
             json={"titles": ["Kept"], "after": None}),
    Scenario("a bulk delete through the query", "DELETE", "/tags?note=none", None, 200,
             [TAKEN], json={"deleted": 0}),
    Scenario("a streamed response reads in a unit of its own", "GET", "/members/export", None,
             200, [TAKEN]),
]  # fmt: skip


@dataclass(frozen=True)
class Outcome:
    status: int
    json: Any
    members: list[str]
    tags: list[str]
    audit: list[str]


@dataclass(frozen=True)
class Way:
    """How one way sends a request, and reaches the database it writes to."""

    send: Callable[[Scenario], Awaitable[tuple[int, Any]]]
    writing: Callable[[], AbstractAsyncContextManager[AsyncConnection]]
    """A connection to set the scenario up with, committed at its end if the way commits."""
    reading: Callable[[], AbstractAsyncContextManager[AsyncConnection]]
    settle: Callable[[], Awaitable[None]]


async def _run(scenario: Scenario, way: Way, audit: Callable[[], Awaitable[list[str]]]) -> Outcome:
    async with way.writing() as setup:
        await setup.execute(insert(Member).values(name=TAKEN))
        await setup.execute(insert(Volume).values(id=VOLUME, title="Kept", shelf="open", version=1))
    status, body = await way.send(scenario)
    await way.settle()
    deadline = time.monotonic() + 10
    while True:  # background work may end after the answer: wait for what it writes
        async with way.reading() as reader:
            members = list((await reader.scalars(select(Member.name).order_by("name"))).all())
            names = (await reader.scalars(select(Tag.name).order_by("name"))).all()
        tags = [name for name in names if name != "welcome"]
        if len(tags) >= len(scenario.tags) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    json = body if scenario.json is not None else None
    return Outcome(status, json, members, tags, await audit())


def _expected(scenario: Scenario) -> Outcome:
    return Outcome(scenario.status, scenario.json, scenario.members, scenario.tags, scenario.audit)


async def _empty(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        for model in (Loan, Member, Volume):
            await connection.execute(delete(model))
        await connection.execute(delete(Tag).where(Tag.name != "welcome"))


@pytest.mark.service_committing  # each way manages its own transactions
async def test_one_list_of_scenarios_gives_the_same_outcomes_every_way(
    club: Serve,
    served_club: httpx.AsyncClient,
    service_database: TestDatabase,
    plain_engine: AsyncEngine,
    audit_entries: AuditEntries,
) -> None:
    app, client = await club()
    outer: list[AsyncConnection] = []

    async def in_process(scenario: Scenario) -> tuple[int, Any]:
        response = await client.open(scenario.path, method=scenario.method, json=scenario.body)
        body = await response.get_json() if response.mimetype == "application/json" else None
        return response.status_code, body

    async def served(scenario: Scenario) -> tuple[int, Any]:
        response = await served_club.request(scenario.method, scenario.path, json=scenario.body)
        is_json = response.headers.get("content-type", "").startswith("application/json")
        return response.status_code, response.json() if is_json else None

    async def background_tasks() -> None:
        while app.background_tasks:
            await asyncio.gather(*app.background_tasks)

    async def nothing() -> None:
        pass

    @asynccontextmanager
    async def the_outer_transaction() -> AsyncIterator[AsyncConnection]:
        yield outer[0]

    ways = {
        "plugin": Way(in_process, the_outer_transaction, the_outer_transaction, background_tasks),
        "production": Way(in_process, plain_engine.begin, plain_engine.connect, background_tasks),
        "served": Way(served, plain_engine.begin, plain_engine.connect, nothing),
    }
    outcomes: dict[str, list[Outcome]] = {name: [] for name in ways}
    for scenario in SCENARIOS:
        for name, way in ways.items():
            if name == "plugin":  # one outer transaction per scenario, rolled back after it
                async with rolled_back(service_database.engine) as connection:
                    outer[:] = [connection]
                    outcomes[name].append(await _run(scenario, way, audit_entries))
            else:
                outcomes[name].append(await _run(scenario, way, audit_entries))
                await _empty(plain_engine)
            await audit_entries.clear()

    expected = [_expected(scenario) for scenario in SCENARIOS]
    wrong = [
        f"{scenario.name}: {name} gave {got}, expected {want}"
        for name, seen in outcomes.items()
        for scenario, want, got in zip(SCENARIOS, expected, seen, strict=True)
        if got != want
    ]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("way", ["plugin", pytest.param("production", marks=COMMITTING)])
async def test_a_child_task_nobody_waits_for_commits_on_its_own_under_the_plugin_and_not(
    club: Serve, stored: Stored, way: str
) -> None:
    # Nobody waits for the child, so it commits a unit of its own: on PostgreSQL beside its
    # parent's, on SQLite once its parent has released the write lock.
    app, client = await club()

    response = await client.post("/members/fire-and-forget", json={"name": "kim"})
    outcomes = await asyncio.gather(*app.extensions["club_children"], return_exceptions=True)

    assert response.status_code == 201
    assert outcomes == [None]
    assert await stored(Member.name) == ["kim"]
    assert await stored(Tag.name) == ["child:kim", "welcome"]
    # The test's shared transaction is intact: another request works.
    assert (await client.post("/members", json={"name": "lee"})).status_code == 201


@pytest.mark.service_committing  # two requests at once: connections of their own
async def test_two_concurrent_updates_of_one_row_one_wins_and_the_other_is_a_409(
    club: Serve, plain_engine: AsyncEngine, service_database_url: str
) -> None:
    if service_database_url.startswith("sqlite"):
        pytest.skip("SQLite runs one writer at a time: the second reads the first's version")
    async with plain_engine.begin() as connection:
        await connection.execute(insert(Volume).values(id=VOLUME, title="Old", version=1))
    _, client = await club()

    answers = await asyncio.gather(
        *(
            client.patch(f"/volumes/{VOLUME}", json={"title": title, "pause": 0.3})
            for title in ("First", "Second")
        )
    )

    assert sorted(answer.status_code for answer in answers) == [200, 409]
    async with plain_engine.connect() as connection:
        version = await connection.scalar(select(Volume.version).where(Volume.id == VOLUME))
    assert version == 2


async def test_a_caught_failure_that_cost_earlier_writes_is_logged_with_the_fix(
    club: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    _, client = await club()
    await client.post("/members", json={"name": TAKEN})

    with caplog.at_level(logging.ERROR, logger="service.db"):
        response = await client.post("/claims/caught", json={"names": ["ann"], "duplicate": TAKEN})

    assert response.status_code == 409
    caught = "caught IntegrityError, which had rolled back"
    [record] = [r for r in caplog.records if caught in r.getMessage()]
    assert "POST /claims/caught" in record.getMessage()
    assert "async with unit_of_work():" in record.getMessage()
    assert record.exc_info is not None  # with the traceback of where it was raised and caught
