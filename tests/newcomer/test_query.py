"""What a newcomer reaches for on ``Query``: joins, DISTINCT, EXISTS, and the ``_or_404`` family."""

from __future__ import annotations

import pytest

from service.db import NotFoundError, unit_of_work
from tests.newcomer.conftest import Serve
from tests.newcomer.models import Author, Book


async def _library() -> dict[str, int]:
    async with unit_of_work():
        ids = {}
        for name in ("Banks", "Cherryh", "Delany"):
            ids[name] = (await Author.create(name=name)).id
        for title, author in [("Excession", "Banks"), ("Player", "Banks"), ("Cyteen", "Cherryh")]:
            await Book.create(title=title, author_id=ids[author])
        return ids


async def test_join_distinct_and_exists_through_a_handler(newcomer: Serve) -> None:
    client = await newcomer()
    await _library()

    response = await client.get("/authors/writing")

    assert await response.get_json() == {"names": ["Banks", "Cherryh"], "any": True}


async def test_join_filters_by_the_joined_model() -> None:
    await _library()
    async with unit_of_work(readonly=True):
        query = Author.query.join(Author.books).where(Book.title.startswith("C"))
        assert [author.name for author in await query.all()] == ["Cherryh"]
        without_distinct = await Author.query.join(Author.books).count()
        with_distinct = await Author.query.join(Author.books).distinct().count()

    assert (without_distinct, with_distinct) == (3, 2)


async def test_outerjoin_keeps_rows_without_a_match() -> None:
    await _library()
    async with unit_of_work(readonly=True):
        lonely = Author.query.outerjoin(Author.books).where(Book.id.is_(None))
        assert [author.name for author in await lonely.all()] == ["Delany"]


async def test_exists_says_whether_anything_matches() -> None:
    await _library()
    async with unit_of_work(readonly=True):
        assert await Book.query.filter_by(title="Cyteen").exists() is True
        assert await Book.query.filter_by(title="Dhalgren").exists() is False


async def test_the_or_404_family_returns_the_row_or_raises_not_found() -> None:
    ids = await _library()
    async with unit_of_work(readonly=True):
        assert (await Author.query.get_or_404(ids["Banks"])).name == "Banks"
        assert (await Author.query.filter_by(name="Delany").first_or_404()).id == ids["Delany"]
        assert (await Book.query.filter_by(title="Player").one_or_404()).title == "Player"
        with pytest.raises(NotFoundError, match="No such author"):
            await Author.query.get_or_404(999_999)
        with pytest.raises(NotFoundError, match="nobody here"):
            await Author.query.filter_by(name="Zelazny").first_or_404("nobody here")
        with pytest.raises(NotFoundError):
            await Book.query.filter_by(title="Nova").one_or_404()
