"""Read-only units of work: GET, HEAD and OPTIONS requests, and ``unit_of_work(readonly=True)``.

They may read, and nothing else: no INSERT, UPDATE or DELETE, no row lock. That
lets each database run them at its cheapest. On PostgreSQL their statements run
without a transaction (autocommit: no BEGIN and no COMMIT, two round trips
saved); READ COMMITTED gives each statement a snapshot of its own in a
transaction too, so what they see is the same. On SQLite they begin DEFERRED and
never block other readers or wait for writers. A write in one would, on
PostgreSQL, commit at once whatever the response, so it is refused before it is
sent.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, TextClause, event
from sqlalchemy.orm import ORMExecuteState, Session, UOWTransaction

from service.db._context import UnitOfWorkError
from service.db._session import READONLY, _Session
from service.db._statements import writes

__all__ = ["STREAMED", "listen", "refuse_writes"]


_REFUSED = (
    "This unit of work is read-only (a GET, HEAD or OPTIONS request, or "
    "`unit_of_work(readonly=True)`): it may read, but not {what}. On PostgreSQL its "
    "statements run without a transaction, so a write would be committed at once, whatever "
    "the response. Write in a POST, PUT, PATCH or DELETE request, or in a unit of work that "
    "is not read-only."
)
STREAMED = "service.db.streamed"
"""``session.info``: a read-only unit in autocommit began a transaction to stream rows."""


def _transaction_for_cursor(session: Session) -> None:
    connection = session.connection()
    if connection.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
        return
    adapter: Any = connection.connection.dbapi_connection
    if getattr(adapter, "isolation_level", None) == "autocommit":
        # SQLAlchemy's asyncpg adapter begins a transaction before its next statement
        # unless it is in autocommit; its reset on return to the pool ends it (ROLLBACK)
        # and restores the level. Reads in it see what they would in autocommit.
        adapter.isolation_level = "read_committed"
        session.info[STREAMED] = True


def _refuse_flush(session: Session, flush_context: UOWTransaction, instances: object) -> None:
    if session.info.get(READONLY) and (session.new or session.dirty or session.deleted):
        raise UnitOfWorkError(_REFUSED.format(what="add, change or delete objects"))


def refuse_writes(state: ORMExecuteState) -> None:
    """Part of the layer's one ``do_orm_execute`` listener (``_loading``): read-only units.

    They may stream (``session.stream()``, ``yield_per``): on PostgreSQL a server-side
    cursor needs a transaction, so a unit in autocommit begins one for it.
    """
    if not state.session.info.get(READONLY):
        return
    options = state.execution_options
    if options.get("stream_results") or options.get("yield_per"):
        _transaction_for_cursor(state.session)
    statement = state.statement
    if state.is_insert or state.is_update or state.is_delete:
        raise UnitOfWorkError(_REFUSED.format(what="insert, update or delete rows"))
    if isinstance(statement, Select) and statement._for_update_arg is not None:
        raise UnitOfWorkError(_REFUSED.format(what="lock rows (`with_for_update()`)"))
    if isinstance(statement, TextClause) and writes(statement.text):
        raise UnitOfWorkError(_REFUSED.format(what="write or lock rows"))


def listen() -> None:
    """Install this module's session listener (``_listeners.install``)."""
    event.listen(_Session, "before_flush", _refuse_flush)
