"""The async Active Record API: save, update, delete, create, get, query."""

from __future__ import annotations

import pytest
from sqlalchemy import Select, select
from sqlalchemy.exc import IntegrityError, MultipleResultsFound, NoResultFound
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.orm import Mapped, mapped_column

from service.db import Model, Query, RolledBackError, unit_of_work
from tests.db.conftest import ReadNames
from tests.db.models import Widget


async def test_save_flushes_at_once_and_returns_the_instance(
    service_connection: AsyncConnection, stored_names: ReadNames
) -> None:
    async with unit_of_work():
        widget = Widget(name="saved")
        assert await widget.save() is widget
        assert widget.id is not None
        # Flushed: visible in the transaction before the unit of work commits.
        assert await stored_names() == ["saved"]


async def test_a_database_error_surfaces_at_save_and_the_session_stays_usable(
    stored_names: ReadNames,
) -> None:
    async with unit_of_work():
        await Widget.create(name="taken")
    async with unit_of_work():
        with pytest.raises(IntegrityError):
            await Widget(name="taken").save()  # the unit's first write: nothing is lost
        assert await Widget.query.count() == 1
        await Widget.create(name="after")
    assert await stored_names() == ["after", "taken"]


async def test_a_caught_error_that_rolled_back_earlier_writes_cannot_commit(
    stored_names: ReadNames,
) -> None:
    async with unit_of_work():
        await Widget.create(name="taken")
    with pytest.raises(RolledBackError) as raised:
        async with unit_of_work():
            await Widget.create(name="rolled-back-with-the-session")
            with pytest.raises(IntegrityError):
                await Widget(name="taken").save()
            assert await Widget.query.count() == 1  # still usable: the earlier write is gone
            await Widget.create(name="after")
    assert isinstance(raised.value.cause, IntegrityError)
    assert await stored_names() == ["taken"]


async def test_a_savepoint_contains_a_failed_save(stored_names: ReadNames) -> None:
    async with unit_of_work():
        await Widget.create(name="taken")
    async with unit_of_work():
        await Widget.create(name="before")
        with pytest.raises(IntegrityError):
            async with unit_of_work():
                await Widget.create(name="inside")
                await Widget(name="taken").save()
        await Widget.create(name="after")
    assert await stored_names() == ["after", "before", "taken"]


async def test_attributes_stay_readable_after_the_commit() -> None:
    # expire_on_commit=False: no lazy load (MissingGreenlet) when serializing later.
    async with unit_of_work():
        widget = await Widget.create(name="loaded", size=7)
    assert (widget.id, widget.name, widget.size) == (widget.id, "loaded", 7)


async def test_update_sets_fields_and_saves(stored_names: ReadNames) -> None:
    async with unit_of_work():
        widget = await Widget.create(name="old")
        assert await widget.update(name="new", size=3) is widget
    assert await stored_names() == ["new"]


async def test_update_with_an_unknown_field_raises_before_writing(
    stored_names: ReadNames,
) -> None:
    async with unit_of_work():
        widget = await Widget.create(name="unchanged")
        with pytest.raises(TypeError, match="'colour'"):
            await widget.update(name="changed", colour="red")
        assert widget.name == "unchanged"
    assert await stored_names() == ["unchanged"]


async def test_delete_removes_the_row(stored_names: ReadNames) -> None:
    async with unit_of_work():
        widget = await Widget.create(name="gone")
        await Widget.create(name="stays")
        await widget.delete()
        assert await Widget.get(widget.id) is None
    assert await stored_names() == ["stays"]


async def test_get_returns_the_instance_or_none() -> None:
    async with unit_of_work():
        widget = await Widget.create(name="found")
        found_id = widget.id
    async with unit_of_work():
        found = await Widget.get(found_id)
        assert found is not None and found.name == "found"
        assert await Widget.get(found_id + 1000) is None
        assert await Widget.query.get(found_id) is found


async def test_query_chains_like_select(service_connection: AsyncConnection) -> None:
    async with unit_of_work():
        for size, name in enumerate(["d", "b", "a", "c", "e"]):
            await Widget.create(name=name, size=size)

        everything = Widget.query.order_by(Widget.name)
        assert [w.name for w in await everything.all()] == ["a", "b", "c", "d", "e"]
        assert [w.name for w in await everything.offset(1).limit(2).all()] == ["b", "c"]
        assert [w.name for w in await everything.where(Widget.size >= 3).all()] == ["c", "e"]
        assert (await Widget.query.filter_by(name="b").one()).size == 1
        first = await everything.first()
        assert first is not None and first.name == "a"
        assert await Widget.query.filter_by(name="zzz").first() is None
        assert await Widget.query.count() == 5
        assert await everything.where(Widget.size < 2).count() == 2
        # Each step is a new query: the original is untouched.
        assert await everything.count() == 5

        with pytest.raises(NoResultFound):
            await Widget.query.filter_by(name="zzz").one()
        with pytest.raises(MultipleResultsFound):
            await Widget.query.one()


async def test_query_is_a_select_statement() -> None:
    query = Widget.query.filter_by(name="a")
    assert isinstance(query, Query)
    assert isinstance(query.statement, Select)
    assert query.statement.compile().params == {"service_db_q0": "a"}
    same = str(select(Widget).filter_by(name="a")).replace(":name_1", ":service_db_q0")
    assert str(query.statement) == same


async def test_a_structural_query_is_built_once_and_its_values_carried() -> None:
    def chain(name: str, size: int) -> Query[Widget]:
        return Widget.query.filter_by(name=name).order_by(Widget.id).limit(size)

    first, second = chain("a", 1), chain("b", 2)

    assert first._statement is second._statement  # built once, from the cache
    assert first.statement.compile().params != second.statement.compile().params
    valued = Widget.query.where(Widget.size > 1)
    assert valued._statement is not Widget.query.where(Widget.size > 1)._statement


async def test_cached_queries_run_with_their_own_values(stored_names: ReadNames) -> None:
    async with unit_of_work():
        for name, size in [("a", 1), ("b", 2), ("c", None)]:
            await Widget.create(name=name, size=size or 0)
    async with unit_of_work():
        assert [w.name for w in await Widget.query.filter_by(size=1).all()] == ["a"]
        assert [w.name for w in await Widget.query.filter_by(size=2).all()] == ["b"]
        assert (await Widget.query.filter_by(name="c").first_or_404()).size == 0
        assert await Widget.query.filter_by(name=None).count() == 0  # IS NULL, as written
        page = Widget.query.order_by(Widget.name).limit(2)
        assert [w.name for w in await page.all()] == ["a", "b"]
        assert [w.name for w in await page.offset(2).all()] == ["c"]


@pytest.mark.parametrize("name", ["query", "save", "update", "delete", "create", "get"])
def test_a_column_named_like_a_method_fails_at_class_creation(name: str) -> None:
    namespace = {
        "__tablename__": f"test_clash_{name}",
        "__annotations__": {"id": "Mapped[int]", name: "Mapped[str]"},
        "id": mapped_column(primary_key=True),
        name: mapped_column(),
    }
    with pytest.raises(TypeError, match=f"'{name}'.*shadow"):
        type(f"Clash{name.title()}", (Model,), namespace)


def test_overriding_a_method_is_allowed() -> None:
    class Audited(Model):
        __tablename__ = "test_audited"
        id: Mapped[int] = mapped_column(primary_key=True)

        async def save(self) -> Audited:
            return await super().save()

    assert Audited.__tablename__ == "test_audited"
    Model.metadata.remove(Audited.__table__)  # type: ignore[arg-type]


def test_a_mixin_cannot_shadow_a_method_either() -> None:
    class Queryable:
        query: Mapped[str] = mapped_column()

    with pytest.raises(TypeError, match="'query'.*shadow"):
        type(
            "Mixed",
            (Queryable, Model),
            {
                "__tablename__": "test_mixed",
                "__annotations__": {"id": "Mapped[int]"},
                "id": mapped_column(primary_key=True),
            },
        )


async def test_any_failed_flush_rolls_back_and_leaves_the_session_usable(
    stored_names: ReadNames,
) -> None:
    async with unit_of_work():
        with pytest.raises(Exception):  # noqa: B017 - the driver's own error, which varies
            await Widget.create(name="too-big", size=10**30)
        await Widget.create(name="after")
    assert await stored_names() == ["after"]


async def test_a_chained_query_get_applies_the_chain() -> None:
    async with unit_of_work():
        small = await Widget.create(name="small", size=1)
        assert await Widget.query.where(Widget.size > 5).get(small.id) is None
        locked = await Widget.query.with_for_update().get(small.id)
        assert locked is small
        assert await Widget.query.filter_by(name="small").get(small.id + 1) is None
