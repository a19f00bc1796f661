"""Models that exist only for the layer's tests."""

from __future__ import annotations

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from service.db import Model


class Widget(Model):
    __tablename__ = "test_widgets"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50), unique=True)
    size: Mapped[int] = mapped_column(default=0)


class Part(Model):
    """Its foreign key is checked at COMMIT, not at flush: a commit that can fail."""

    __tablename__ = "test_parts"

    id: Mapped[int] = mapped_column(primary_key=True)
    widget_id: Mapped[int] = mapped_column(
        ForeignKey("test_widgets.id", deferrable=True, initially="DEFERRED")
    )
