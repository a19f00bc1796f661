"""A newcomer's models: a module of their own, on the layer's public names only."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from service.db import Model, UTCDateTime


def _now() -> datetime:
    return datetime.now(UTC)


class Author(Model):
    __tablename__ = "newcomer_authors"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    joined_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)
    books: Mapped[list[Book]] = relationship(back_populates="author", order_by="Book.id")


class Book(Model):
    __tablename__ = "newcomer_books"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    author_id: Mapped[int] = mapped_column(ForeignKey("newcomer_authors.id"))
    author: Mapped[Author] = relationship(back_populates="books")
