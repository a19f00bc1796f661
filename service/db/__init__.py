"""The unit-of-work layer: task-scoped sessions and async Active Record models.

Knows nothing of the ledger; it could be lifted out as a library. It loads no web
framework: the Quart binding is ``service.db.quart``, the CLI's is ``service.db.cli``,
the test support ``service.db.testing``, and the events ``service.db.events``.
"""

from service.db import events
from service.db._causal import caller, read_from_primary, reading_after
from service.db._context import (
    Bind,
    RolledBackError,
    UnitOfWorkError,
    current_unit_of_work,
)
from service.db._engine import make_engine
from service.db._loading import NotLoadedError
from service.db._model import Model
from service.db._pages import KeysetPage, Page
from service.db._query import NotFoundError, Query
from service.db._replicas import ReplicaStats
from service.db._session import session
from service.db._statements import wal_position
from service.db._types import UTCDateTime
from service.db._unit_of_work import on_commit, unit_of_work

__all__ = [
    "Bind",
    "KeysetPage",
    "Model",
    "NotFoundError",
    "NotLoadedError",
    "Page",
    "Query",
    "ReplicaStats",
    "RolledBackError",
    "UTCDateTime",
    "UnitOfWorkError",
    "caller",
    "current_unit_of_work",
    "events",
    "make_engine",
    "on_commit",
    "read_from_primary",
    "reading_after",
    "session",
    "unit_of_work",
    "wal_position",
]
