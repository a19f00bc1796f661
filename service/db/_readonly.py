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

import re
import weakref

from sqlalchemy import Select, TextClause, event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.orm import ORMExecuteState, Session, UOWTransaction

from service.db._session import READONLY, UnitOfWorkError, _Session

__all__ = ["autocommits", "readonly_bind", "refuse_writes"]


_REFUSED = (
    "This unit of work is read-only (a GET, HEAD or OPTIONS request, or "
    "`unit_of_work(readonly=True)`): it may read, but not {what}. On PostgreSQL its "
    "statements run without a transaction, so a write would be committed at once, whatever "
    "the response. Write in a POST, PUT, PATCH or DELETE request, or in a unit of work that "
    "is not read-only."
)
_READING = re.compile(
    r"\s*(SELECT|WITH|VALUES|TABLE|SHOW|EXPLAIN|SAVEPOINT|RELEASE|ROLLBACK)\b", re.IGNORECASE
)
_MODIFYING_CTE = re.compile(r"\s*WITH\b.*\b(INSERT|UPDATE|DELETE|MERGE)\b", re.I | re.S)
_LOCKING = re.compile(r"\bFOR\s+(UPDATE|SHARE|NO\s+KEY\s+UPDATE|KEY\s+SHARE)\b", re.I)

_autocommit: weakref.WeakKeyDictionary[AsyncEngine, AsyncEngine] = weakref.WeakKeyDictionary()


def readonly_bind(
    bind: AsyncEngine | AsyncConnection | None,
) -> AsyncEngine | AsyncConnection | None:
    """The bind a read-only unit's session uses: on PostgreSQL, the engine in autocommit."""
    if not isinstance(bind, AsyncEngine) or bind.dialect.name != "postgresql":
        return bind
    found = _autocommit.get(bind)
    if found is None:
        # Shares the engine's pool; asyncpg switches to autocommit without a round trip.
        found = _autocommit[bind] = bind.execution_options(isolation_level="AUTOCOMMIT")
    return found


def autocommits(bind: object) -> bool:
    """Whether ``bind`` is a PostgreSQL engine in autocommit, as ``readonly_bind``'s are."""
    return (
        isinstance(bind, AsyncEngine)
        and bind.dialect.name == "postgresql"
        and bind.get_execution_options().get("isolation_level") == "AUTOCOMMIT"
    )


@event.listens_for(_Session, "before_flush")
def _refuse_flush(session: Session, flush_context: UOWTransaction, instances: object) -> None:
    if session.info.get(READONLY) and (session.new or session.dirty or session.deleted):
        raise UnitOfWorkError(_REFUSED.format(what="add, change or delete objects"))


def refuse_writes(state: ORMExecuteState) -> None:
    """Part of the layer's one ``do_orm_execute`` listener (``_loading``): read-only units."""
    if not state.session.info.get(READONLY):
        return
    statement = state.statement
    if state.is_insert or state.is_update or state.is_delete:
        raise UnitOfWorkError(_REFUSED.format(what="insert, update or delete rows"))
    if isinstance(statement, Select) and statement._for_update_arg is not None:
        raise UnitOfWorkError(_REFUSED.format(what="lock rows (`with_for_update()`)"))
    if isinstance(statement, TextClause) and _writes(statement.text):
        raise UnitOfWorkError(_REFUSED.format(what="write or lock rows"))


def _writes(sql: str) -> bool:
    return not _READING.match(sql) or bool(_MODIFYING_CTE.match(sql) or _LOCKING.search(sql))
