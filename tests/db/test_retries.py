"""``unit_of_work(retries=N)``: the whole unit again on 40001 and 40P01, nothing else.

The races are real: two concurrent transactions on PostgreSQL, which SQLite,
with one writer at a time, cannot have.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db import UnitOfWorkError, make_engine, on_commit, session, unit_of_work
from tests.databases import PGBOUNCER
from tests.db.conftest import ReadNames
from tests.db.models import Widget


@pytest.fixture
async def serializable(service_database_url: str) -> AsyncIterator[AsyncEngine]:
    if not service_database_url.startswith("postgresql"):
        pytest.skip("needs concurrent writers: PostgreSQL (the PostgreSQL run has it)")
    engine = make_engine(service_database_url, isolation_level="SERIALIZABLE", pgbouncer=PGBOUNCER)
    yield engine
    await engine.dispose()


@pytest.mark.service_committing
async def test_a_serialization_failure_reruns_the_whole_unit_of_work(
    serializable: AsyncEngine, stored_names: ReadNames
) -> None:
    attempts: Counter[str] = Counter()
    committed: list[tuple[str, int]] = []
    both_have_read = asyncio.Barrier(2)

    @unit_of_work(bind=serializable, retries=3, backoff=0.01)
    async def add_one_counting_the_others(who: str) -> None:
        attempts[who] += 1
        attempt = attempts[who]
        seen = await session.scalar(select(func.count()).select_from(Widget))
        on_commit(lambda: committed.append((who, attempt)))
        if attempt == 1:
            await both_have_read.wait()  # write skew: each decides on what the other changes
        await Widget(name=f"{who} saw {seen}").save()

    await asyncio.gather(add_one_counting_the_others("a"), add_one_counting_the_others("b"))

    assert sum(attempts.values()) == 3  # one of them lost the race and ran again
    retried = max(attempts, key=lambda who: attempts[who])
    first = "b" if retried == "a" else "a"
    assert await stored_names() == sorted([f"{first} saw 0", f"{retried} saw 1"])
    assert sorted(committed) == sorted([(first, 1), (retried, 2)])  # the failed attempt's: never


@pytest.mark.service_committing
async def test_a_deadlock_reruns_the_unit_of_work_that_the_database_chose(
    serializable: AsyncEngine, stored_names: ReadNames
) -> None:
    async with unit_of_work(bind=serializable):
        await Widget(name="left").save()
        await Widget(name="right").save()
    attempts: Counter[str] = Counter()
    both_hold_one = asyncio.Barrier(2)

    @unit_of_work(bind=serializable, retries=3, backoff=0.01)
    async def grow(first: str, second: str) -> None:
        attempts[first] += 1
        grown = Widget.size + 1
        await session.execute(update(Widget).where(Widget.name == first).values(size=grown))
        if attempts[first] == 1:
            await both_hold_one.wait()  # each holds one row lock and wants the other's
        await session.execute(update(Widget).where(Widget.name == second).values(size=grown))

    await asyncio.gather(grow("left", "right"), grow("right", "left"))

    assert sum(attempts.values()) == 3
    sizes = await _sizes(serializable)
    assert sizes == {"left": 2, "right": 2}  # both units applied once, none twice


async def _sizes(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as connection:
        rows = await connection.execute(select(Widget.name, Widget.size))
        return {name: size for name, size in rows}


@pytest.mark.service_committing
async def test_other_errors_are_not_retried(stored_names: ReadNames) -> None:
    async with unit_of_work():
        await Widget(name="taken").save()
    attempts = 0

    @unit_of_work(retries=3, backoff=0.01)
    async def add_a_duplicate() -> None:
        nonlocal attempts
        attempts += 1
        await Widget(name="taken").save()

    with pytest.raises(IntegrityError):
        await add_a_duplicate()
    assert attempts == 1
    assert await stored_names() == ["taken"]


async def test_retries_need_the_decorator_form() -> None:
    with pytest.raises(UnitOfWorkError, match=r"decorate the coroutine"):
        async with unit_of_work(retries=2):
            pass
