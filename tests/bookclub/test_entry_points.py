"""Every way into the book club is a unit of work, served by Hypercorn and under the plugin.

A websocket: one unit of work per message, a failed message rolled back without
closing the socket, no transaction held between messages. A streamed response:
rows read in a unit of their own, a batch at a time, the connection back in the
pool as soon as the client goes away. A ``before_serving`` hook registered before
``Database(app)``, a CLI command, a job.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import websockets
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db.testing import running_coroutines_with
from tests.bookclub.conftest import Serve, Stored
from tests.bookclub.models import Member, Tag

ROOT = Path(__file__).resolve().parents[2]
MESSAGES = 100
FAILING = 37  # this message's name is taken: its unit rolls back, the socket goes on


def _name(number: int) -> str:
    return "taken" if number == FAILING else f"member {number:03}"


# A websocket --------------------------------------------------------------------------------


@pytest.mark.service_committing
async def test_a_served_websocket_commits_each_message_and_holds_nothing_between_them(
    served_club: httpx.AsyncClient, stored: Stored, plain_engine: AsyncEngine
) -> None:
    async with plain_engine.begin() as connection:
        await connection.execute(insert(Member).values(name="taken"))
    url = str(served_club.base_url).replace("http://", "ws://") + "/ws/members"
    before = await _post_times(served_club, "alone", 5)

    async with websockets.connect(url) as socket:
        answers = []
        for number in range(MESSAGES):
            await socket.send(json.dumps({"name": _name(number)}))
            answers.append(json.loads(await socket.recv()))
        # The socket stays open, idle: another client's writes must not wait for it.
        during = await _post_times(served_club, "during", 5)
        await socket.send(json.dumps({"name": "after the others"}))
        last = json.loads(await socket.recv())

    print(
        f"\nPOST /members, median of 5: {statistics.median(before) * 1000:.1f} ms with no "
        f"socket, {statistics.median(during) * 1000:.1f} ms with the socket open and idle"
    )
    assert answers[FAILING] == {"error": "taken", "name": "taken"}
    assert all("id" in answer for n, answer in enumerate(answers) if n != FAILING)
    assert "id" in last
    names = await stored(Member.name)
    assert len([name for name in names if name.startswith("member ")]) == MESSAGES - 1
    assert max(during) < 1.0  # not held up by the socket (a held lock would be its lifetime)


async def _post_times(client: httpx.AsyncClient, prefix: str, count: int) -> list[float]:
    times = []
    for number in range(count):
        started = time.perf_counter()
        response = await client.post("/members", json={"name": f"{prefix} {number}"})
        times.append(time.perf_counter() - started)
        assert response.status_code == 201
    return times


async def test_under_the_plugin_a_websocket_commits_each_message_the_same_way(
    club: Serve, stored: Stored
) -> None:
    _, client = await club()
    await client.post("/members", json={"name": "taken"})

    async with client.websocket("/ws/members") as socket:
        answers = []
        for number in range(MESSAGES):
            await socket.send_json({"name": _name(number)})
            answers.append(await socket.receive_json())
        response = await client.post("/members", json={"name": "while the socket is open"})

    assert answers[FAILING] == {"error": "taken", "name": "taken"}
    assert response.status_code == 201
    names = await stored(Member.name)
    assert len([name for name in names if name.startswith("member ")]) == MESSAGES - 1


async def test_a_websocket_without_a_unit_of_work_is_told_so_and_shown_how(club: Serve) -> None:
    _, client = await club()

    async with client.websocket("/ws/without-unit") as socket:
        await socket.send_json({"name": "nobody"})
        answer = await socket.receive_json()

    assert "Here: a websocket handler" in answer["error"]
    assert "async with unit_of_work(): ...` around each message" in answer["error"]


# A streamed response ------------------------------------------------------------------------

ROWS = 100_000
READ = 1_000


@pytest.mark.service_committing
async def test_a_served_stream_of_many_rows_gives_its_connection_back_when_the_client_leaves(
    served_club: httpx.AsyncClient, plain_engine: AsyncEngine
) -> None:
    async with plain_engine.begin() as connection:
        await connection.execute(insert(Member), [{"name": f"m{n:06}"} for n in range(ROWS)])

    lines = []
    async with served_club.stream("GET", "/members/export") as response:
        assert response.status_code == 200
        # The stream holds no write lock: a write goes through while it is open.
        written = await served_club.post("/members", json={"name": "during the stream"})
        async for line in response.aiter_lines():
            lines.append(json.loads(line))
            if len(lines) == READ:
                break
    left_at = time.time()  # the client has closed the connection mid-stream

    deadline = time.monotonic() + 5
    while True:
        pool = (await served_club.get("/pool")).json()
        if pool["checked_out"] == 0 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.02)
    back = pool["checked_in_at"] - left_at
    print(f"\nthe connection was back in the pool {back:+.3f} s after the client left")
    assert written.status_code == 201
    assert [line["name"] for line in lines[:2]] == ["m000000", "m000001"]
    assert pool["checked_out"] == 0
    assert pool["checked_in_at"] - left_at < 1.0


async def test_under_the_plugin_a_streamed_response_reads_its_rows_the_same_way(
    club: Serve,
) -> None:
    _, client = await club()
    for name in ("ann", "bob", "cid"):
        await client.post("/members", json={"name": name})

    response = await client.get("/members/export")

    body = await response.get_data(as_text=True)
    assert response.status_code == 200
    assert [json.loads(line)["name"] for line in body.splitlines()] == ["ann", "bob", "cid"]


async def test_a_stream_that_reads_outside_a_unit_of_work_is_told_why(
    club: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    _, client = await club()
    await client.post("/members", json={"name": "ann"})

    with pytest.raises(Exception, match="a streamed response's body.*unit_of_work"):
        response = await client.get("/members/export-without-unit")
        await response.get_data()


# Start-up, the CLI, jobs --------------------------------------------------------------------


async def test_a_before_serving_hook_registered_before_the_database_still_uses_it(
    club: Serve, stored: Stored
) -> None:
    await club()

    assert "welcome" in await stored(Tag.name)


@pytest.mark.parametrize("fail", [False, True])
async def test_a_cli_command_is_a_unit_of_work_under_the_plugin(
    club: Serve, stored: Stored, fail: bool
) -> None:
    app, _ = await club()
    loop = asyncio.get_running_loop()

    def on_this_loop(coroutine: object) -> object:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result()  # type: ignore[arg-type]

    args = ["add-member", "noor", *(["--fail"] if fail else [])]
    with running_coroutines_with(on_this_loop):
        result = await asyncio.to_thread(app.test_cli_runner().invoke, args=args)

    assert result.exit_code == (1 if fail else 0), result.output
    assert await stored(Member.name) == ([] if fail else ["noor"])


@pytest.mark.service_committing
@pytest.mark.parametrize("fail", [False, True])
async def test_a_cli_command_run_by_quart_uses_the_apps_database_and_commits_on_success(
    stored: Stored, service_database_url: str, audit_database_url: str, fail: bool
) -> None:
    # DATABASE_URL comes from the app's configuration, not from the command's environment.
    env = {
        **{key: value for key, value in os.environ.items() if key != "DATABASE_URL"},
        "CLUB_DATABASE_URL": service_database_url,
        "CLUB_AUDIT_DATABASE_URL": audit_database_url,
        "PYTHONPATH": str(ROOT),
    }
    args = ["add-member", "omar", *(["--fail"] if fail else [])]
    command = [sys.executable, "-m", "quart", "--app", "tests.bookclub.served:app", *args]

    finished = await asyncio.to_thread(
        subprocess.run, command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )

    assert finished.returncode == (1 if fail else 0), finished.stderr
    assert ("added omar" in finished.stdout) is True
    assert await stored(Member.name) == ([] if fail else ["omar"])


@pytest.mark.service_committing
async def test_a_served_job_runs_after_its_request_committed(
    served_club: httpx.AsyncClient, stored: Stored
) -> None:
    response = await served_club.post("/members/welcome", json={"name": "pia"})
    refused = await served_club.post("/members/welcome", json={"name": "quinn", "fail": True})

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if "welcomed:pia" in await stored(Tag.name):
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)  # time enough for a job that should not exist

    assert (response.status_code, refused.status_code) == (202, 422)
    assert [tag for tag in await stored(Tag.name) if tag.startswith("welcomed:")] == [
        "welcomed:pia"
    ]
