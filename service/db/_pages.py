"""Pages of a query's rows: numbered (``Query.paginate``) and keyset (``Query.keyset``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

__all__ = ["KeysetPage", "Page"]

_M = TypeVar("_M")


@dataclass(frozen=True, slots=True)
class Page(Generic[_M]):
    """One page of rows, and where it stands among all of them."""

    items: list[_M]
    total: int
    """How many rows match, on every page."""
    page: int
    """This page's number, from 1."""
    per_page: int

    @property
    def pages(self) -> int:
        """How many pages there are (at least 1, even when there are no rows)."""
        return max(1, math.ceil(self.total / self.per_page))

    @property
    def has_next(self) -> bool:
        return self.page < self.pages

    @property
    def has_prev(self) -> bool:
        return self.page > 1


@dataclass(frozen=True, slots=True)
class KeysetPage(Generic[_M]):
    """Rows after a key, in primary-key order; ``after`` is the key of the next page."""

    items: list[_M]
    after: Any
    """Pass it back as ``keyset(after=...)`` for the next page; ``None`` on the last one."""
