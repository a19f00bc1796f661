"""Relationships: loaded in the layer's own words, or refused with an error that says how."""

from __future__ import annotations

import logging

import pytest
from quart.typing import TestClientProtocol as Client

from service.db import NotLoadedError, unit_of_work
from service.testing import Queries
from tests.newcomer.conftest import Serve
from tests.newcomer.models import Author, Book


async def _author_with_books(client: Client) -> int:
    author = await (await client.post("/authors", json={"name": "Octavia"})).get_json()
    for title in ("Kindred", "Dawn"):
        await client.post("/books", json={"title": title, "author_id": author["id"]})
    author_id: int = author["id"]
    return author_id


async def test_query_load_brings_a_collection_in_one_more_query(
    newcomer: Serve, service_queries: Queries
) -> None:
    client = await newcomer()
    author_id = await _author_with_books(client)

    with service_queries.at_most(2):  # the author, then its books: never one query per book
        response = await client.get(f"/authors/{author_id}")

    assert response.status_code == 200
    assert await response.get_json() == {"name": "Octavia", "books": ["Kindred", "Dawn"]}


async def test_query_load_brings_a_single_object_in_the_same_query(
    newcomer: Serve, service_queries: Queries
) -> None:
    client = await newcomer()
    author_id = await _author_with_books(client)
    async with unit_of_work():
        book = await Book.query.filter_by(author_id=author_id).first_or_404()

    with service_queries.at_most(1):
        response = await client.get(f"/books/{book.id}")

    assert await response.get_json() == {"title": "Kindred", "author": "Octavia"}


async def test_an_instance_loads_one_relationship_now(newcomer: Serve) -> None:
    client = await newcomer()
    author_id = await _author_with_books(client)

    response = await client.get(f"/authors/{author_id}/loaded")

    assert await response.get_json() == {"books": ["Kindred", "Dawn"]}


async def test_reading_a_relationship_not_loaded_names_it_and_says_how_to_load_it(
    newcomer: Serve,
) -> None:
    client = await newcomer(testing=True)  # the handler's exception reaches the test
    author_id = await _author_with_books(client)

    with pytest.raises(NotLoadedError) as raised:
        await client.get(f"/authors/{author_id}/lazy")

    message = str(raised.value)
    assert "Author.books is not loaded" in message
    assert "Author.query.load(Author.books)" in message
    assert "author.load(Author.books)" in message
    assert "greenlet" not in message.lower()


async def test_in_production_it_is_a_500_with_the_attribute_in_the_log(
    newcomer: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    client = await newcomer()
    author_id = await _author_with_books(client)

    with caplog.at_level(logging.ERROR):
        response = await client.get(f"/authors/{author_id}/lazy")

    assert response.status_code == 500
    assert "Author.books is not loaded" in caplog.text
    assert "MissingGreenlet" not in caplog.text


async def test_a_many_to_one_not_loaded_is_refused_too() -> None:
    async with unit_of_work():
        author = await Author.create(name="Le Guin")
        await Book.create(title="The Dispossessed", author_id=author.id)
    async with unit_of_work():
        book = await Book.query.filter_by(title="The Dispossessed").one()
        with pytest.raises(NotLoadedError, match=r"Book\.author is not loaded"):
            _ = book.author


async def test_an_expired_attribute_says_so_rather_than_missing_greenlet() -> None:
    async with unit_of_work():
        await Author.create(name="Butler")
    async with unit_of_work():
        author = await Author.query.filter_by(name="Butler").one()
        with pytest.raises(Exception, match="unique|UNIQUE|duplicate"):
            await Author.create(name="Butler")  # the failed save rolls back: author expired
        with pytest.raises(NotLoadedError, match=r"Author\.name.*expired"):
            _ = author.name


async def test_loading_an_unknown_relationship_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"Author has no relationship 'novels'.*books"):
        Author.query.load("novels")
