"""The README's child units of work (``asyncio.gather`` of ``@unit_of_work()`` coroutines).

They work on both databases, in production and under the test plugin. Where
SQLite cannot do it (the parent already holds its one write lock, and waits for
the children), they fail at once with a ``UnitOfWorkError`` that says why: never
a hang until the busy timeout.
"""

from __future__ import annotations

import asyncio

import pytest

from service.db import UnitOfWorkError, unit_of_work
from tests.newcomer.conftest import Serve, StoredAuthors
from tests.newcomer.models import Author

NAMES = ["Ada", "Grace", "Radia"]
COMMITTING = pytest.mark.service_committing


@unit_of_work()
async def _add(name: str) -> None:
    await Author.create(name=name)


def _sqlite(url: str) -> bool:
    return url.startswith("sqlite")


BOTH_WAYS = pytest.mark.parametrize(
    "committing",
    [pytest.param(False, id="plugin"), pytest.param(True, id="real", marks=COMMITTING)],
)


@BOTH_WAYS
async def test_children_before_the_parent_uses_the_database_commit_each(
    newcomer: Serve, stored_authors: StoredAuthors, committing: bool
) -> None:
    client = await newcomer(testing=True)

    response = await client.post("/authors/many", json={"names": NAMES})

    assert (response.status_code, await response.get_json()) == (201, {"count": 3})
    assert await stored_authors() == sorted(NAMES)


@pytest.mark.service_committing
async def test_children_after_the_parent_has_used_the_database(
    newcomer: Serve, stored_authors: StoredAuthors, service_database_url: str
) -> None:
    client = await newcomer(testing=True)

    async with asyncio.timeout(10):  # the busy timeout is 30 s: a hang would end there
        if _sqlite(service_database_url):
            with pytest.raises(UnitOfWorkError, match="one writer at a time"):
                await client.post("/authors/many", json={"names": NAMES, "count_first": True})
            assert await stored_authors() == []
        else:
            response = await client.post(
                "/authors/many", json={"names": NAMES, "count_first": True}
            )
            assert (response.status_code, await response.get_json()) == (201, {"count": 3})
            assert await stored_authors() == sorted(NAMES)


async def test_under_the_plugin_the_children_take_turns_in_the_tests_transaction(
    newcomer: Serve, stored_authors: StoredAuthors, service_database_url: str
) -> None:
    # Every session joins the test's one connection through savepoints: interleaved,
    # they broke ("no such savepoint"); the same outcome as production is expected.
    client = await newcomer(testing=True)

    if _sqlite(service_database_url):
        with pytest.raises(UnitOfWorkError, match="one writer at a time"):
            await client.post("/authors/many", json={"names": NAMES, "count_first": True})
        assert await stored_authors() == []
    else:
        response = await client.post("/authors/many", json={"names": NAMES, "count_first": True})
        assert response.status_code == 201
        assert await stored_authors() == sorted(NAMES)


@BOTH_WAYS
async def test_in_a_script_many_children_commit_independently(
    stored_authors: StoredAuthors, committing: bool
) -> None:
    @unit_of_work()
    async def add_or_fail(name: str) -> None:
        await Author.create(name=name)
        if name == "Radia":
            raise RuntimeError("this one fails")

    results = await asyncio.gather(*(add_or_fail(name) for name in NAMES), return_exceptions=True)

    assert [type(result) for result in results] == [type(None), type(None), RuntimeError]
    assert await stored_authors() == ["Ada", "Grace"]
