"""The unit-of-work layer: task-scoped sessions, async Active Record models, Quart binding.

Knows nothing of the ledger; it could be lifted out as a library.
"""

from service.db import _events as events
from service.db._causal import caller, read_from_primary, reading_after, wal_position
from service.db._engine import make_engine
from service.db._loading import NotLoadedError
from service.db._model import Model
from service.db._pages import KeysetPage, Page
from service.db._quart import Database, streaming_body
from service.db._query import Query
from service.db._replicas import ReplicaStats
from service.db._session import RolledBackError, UnitOfWorkError, session
from service.db._types import UTCDateTime
from service.db._unit_of_work import on_commit, unit_of_work

__all__ = [
    "Database",
    "KeysetPage",
    "Model",
    "NotLoadedError",
    "Page",
    "Query",
    "ReplicaStats",
    "RolledBackError",
    "UTCDateTime",
    "UnitOfWorkError",
    "caller",
    "events",
    "make_engine",
    "on_commit",
    "read_from_primary",
    "reading_after",
    "session",
    "streaming_body",
    "unit_of_work",
    "wal_position",
]
