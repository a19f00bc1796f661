"""A newcomer's app: a plain Quart app with ``Database(app)`` and no error handlers of its own.

It uses the layer's public names only (``service.db``), as someone lifting the
layer into their own app would, and nothing of the ledger.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from quart import Quart, abort, request
from sqlalchemy import text

from service.db import session, unit_of_work
from service.db.quart import Database
from tests.newcomer.models import Author, Book


@unit_of_work()
async def _add_author(name: str) -> None:
    await Author.create(name=name)


def create_app(config: Mapping[str, Any]) -> Quart:
    app = Quart(__name__)
    app.config.update(config)
    Database(app)

    @app.post("/authors")
    async def create_author() -> tuple[dict[str, Any], int]:
        body = await request.get_json()
        author = await Author.create(name=body["name"])
        return {"id": author.id, "name": author.name}, 201

    @app.get("/authors/<int:author_id>")
    async def get_author(author_id: int) -> dict[str, Any]:
        author = await Author.query.load(Author.books).get_or_404(author_id)
        return {"name": author.name, "books": [book.title for book in author.books]}

    @app.get("/authors/<int:author_id>/lazy")
    async def get_author_lazily(author_id: int) -> dict[str, Any]:
        author = await Author.query.get_or_404(author_id)
        return {"books": [book.title for book in author.books]}  # not loaded: refused

    @app.get("/authors/<int:author_id>/loaded")
    async def get_author_then_load(author_id: int) -> dict[str, Any]:
        author = await Author.query.get_or_404(author_id)
        await author.load(Author.books)
        return {"books": [book.title for book in author.books]}

    @app.get("/authors/named/<name>")
    async def get_author_by_name(name: str) -> dict[str, Any]:
        author = await Author.query.filter_by(name=name).first_or_404()
        return {"id": author.id}

    @app.get("/authors/writing")
    async def authors_with_books() -> dict[str, Any]:
        """Authors with at least one book, each once: a join, DISTINCT, EXISTS."""
        query = Author.query.join(Author.books).distinct().order_by(Author.name)
        names = [author.name for author in await query.all()]
        return {"names": names, "any": await Book.query.exists()}

    @app.post("/books")
    async def create_book() -> tuple[dict[str, Any], int]:
        body = await request.get_json()
        book = await Book.create(title=body["title"], author_id=body["author_id"])
        return {"id": book.id}, 201

    @app.get("/books/<int:book_id>")
    async def get_book(book_id: int) -> dict[str, Any]:
        book = await Book.query.load(Book.author).get_or_404(book_id)
        return {"title": book.title, "author": book.author.name}

    @app.post("/authors/many")
    async def create_authors() -> tuple[dict[str, Any], int]:
        """The README's child units: each coroutine commits on its own."""
        body = await request.get_json()
        if body.get("count_first"):
            await Author.query.count()  # the parent has used the database first
        await asyncio.gather(*(_add_author(name) for name in body["names"]))
        return {"count": await Author.query.count()}, 201

    @app.get("/forbidden")
    async def forbidden() -> dict[str, Any]:
        abort(403)

    @app.get("/broken")
    async def broken() -> dict[str, Any]:
        await session.execute(text("SELECT * FROM no_such_table"))
        return {}

    @app.get("/crash")
    async def crash() -> dict[str, Any]:
        raise RuntimeError("the handler failed")

    return app
