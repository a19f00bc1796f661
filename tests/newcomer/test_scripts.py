"""A plain script imports the layer and works: its units of work use ``DATABASE_URL``.

The engine is made on first use, in the running loop, and disposed when the loop
shuts down: nothing is printed but what the script prints.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from tests.newcomer.conftest import StoredAuthors

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import asyncio

from service.db import unit_of_work
from tests.newcomer.models import Author, Book


@unit_of_work()
async def add_book(author_id: int, title: str) -> None:
    await Book.create(title=title, author_id=author_id)


async def main() -> None:
    async with unit_of_work():
        author = await Author.create(name="Script")
    await asyncio.gather(*(add_book(author.id, f"Book {n}") for n in range(3)))
    async with unit_of_work(readonly=True):
        print("books:", await Book.query.count())


asyncio.run(main())
"""

FAILING = """
import asyncio

from service.db import unit_of_work
from tests.newcomer.models import Author


async def main() -> None:
    async with unit_of_work():
        await Author.create(name="Never")
        raise SystemExit("the script gave up")


asyncio.run(main())
"""


async def _run(script: str, env: dict[str, str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-W",
        "always::ResourceWarning",  # ignored by default: an unclosed connection would be silent
        "-W",
        "always::RuntimeWarning",  # a coroutine never awaited
        "-c",
        script,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.mark.service_committing  # the script commits for real, on a connection of its own
async def test_a_script_with_database_url_set_commits_and_exits_cleanly(
    service_database_url: str, stored_authors: StoredAuthors
) -> None:
    code, out, err = await _run(SCRIPT, {"DATABASE_URL": service_database_url})

    assert (code, out, err) == (0, "books: 3\n", "")
    assert await stored_authors() == ["Script"]


@pytest.mark.service_committing
async def test_a_failing_script_writes_nothing(
    service_database_url: str, stored_authors: StoredAuthors
) -> None:
    code, _, err = await _run(FAILING, {"DATABASE_URL": service_database_url})

    assert code == 1
    assert err == "the script gave up\n"
    assert await stored_authors() == []


async def test_without_database_url_the_error_says_what_to_set() -> None:
    env = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
    env["DATABASE_URL"] = ""

    code, _, err = await _run(SCRIPT, env)

    assert code == 1
    assert "UnitOfWorkError" in err
    assert "set the DATABASE_URL environment variable" in err
    assert "UnboundExecutionError" not in err
