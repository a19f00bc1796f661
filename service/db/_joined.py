"""Test support: every session joins one connection's transaction, units taking turns on it.

``join_sessions_to(connection)`` is what the plugin's rolled-back tests stand on
(``service.db.testing.rolled_back``). It lives here, with the test support: the
session registry only knows that a connection may be set for sessions to join
(``_session.set_joining``), and the unit of work only that hooks may be told of
its end (``_context.unit_hooks``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.util import await_

from service.db._context import Bind, Unit, acquire_unless_awaited, current, unit_hooks
from service.db._session import same_database, set_joining

__all__ = ["join_sessions_to"]


class _JoinedConnection:
    """The one connection every session joins in tests, shared one unit of work at a time.

    Units of work that would each have a connection of their own share this one, and
    their savepoints must nest, never interleave. So a unit takes the connection when
    its session first uses it and keeps it until it ends; a unit in a child task of
    one that has it (``asyncio.gather`` of ``@unit_of_work()`` coroutines) queues
    behind its siblings for the parent's turn instead, since the parent waits for
    them, and the parent's end waits for the children that share its turn. On
    SQLite, as in production, a child waits for its writing parent's end, unless
    the parent waits for it.
    """

    def __init__(self, connection: AsyncConnection) -> None:
        self.connection = connection
        self.lock = asyncio.Lock()
        self.sqlite = connection.dialect.name == "sqlite"
        self.turns: dict[Unit, asyncio.Lock] = {}
        """The turn each unit holds on the connection."""
        self.children: dict[Unit, asyncio.Lock] = {}
        """The turn each unit's child units take, one at a time, within its own."""

    def serves(self, bind: Bind | None) -> bool:
        """Whether a unit bound to ``bind`` joins: it is on the test's database, or unbound."""
        return bind is None or same_database(bind, self.connection)

    def take_turn(self, conn: Connection, name: object) -> None:
        # The "savepoint" event, in the greenlet of the session's first use of the connection.
        unit = current.get()
        if unit is None or unit in self.turns:
            return  # not a unit's session, or a savepoint of a unit that has its turn
        holder = next((a for a in unit.ancestors() if a in self.turns and not a.ending), None)
        if holder is not None and self.sqlite and not holder.readonly:
            # As in production: the parent holds SQLite's write lock; the child waits for
            # its end, unless the parent waits for the child.
            await_(acquire_unless_awaited(self.lock, holder.task))
            self.turns[unit] = self.lock
            return
        turn = self.lock if holder is None else self.children.setdefault(holder, asyncio.Lock())
        await_(turn.acquire())
        if holder is not None and holder.ending:
            # The parent ended while this child waited (a task it did not wait for): the
            # connection is no longer its to share, so queue like any other unit.
            turn.release()
            turn = self.lock
            await_(turn.acquire())
        self.turns[unit] = turn

    async def ending(self, unit: Unit) -> None:
        children = self.children.get(unit)
        if children is not None:
            # None of its children may be in the middle of a transaction of its own on the
            # shared connection when it ends (a task it started and did not wait for).
            await children.acquire()

    def ended(self, unit: Unit) -> None:
        turn = self.turns.pop(unit, None)
        if turn is not None:
            turn.release()
        children = self.children.pop(unit, None)
        if children is not None and children.locked():
            children.release()


@contextmanager
def join_sessions_to(connection: AsyncConnection) -> Iterator[None]:
    """Make every session join ``connection``'s transaction, through savepoints (for tests).

    Code under test then commits and rolls back as usual, while the caller rolls
    back the outer transaction at the end, leaving nothing behind. Units of work
    take turns on the connection (see ``_JoinedConnection``).
    """
    joined = _JoinedConnection(connection)
    event.listen(connection.sync_connection, "savepoint", joined.take_turn)
    previous = set_joining(joined)
    unit_hooks.append(joined)
    try:
        yield
    finally:
        unit_hooks.remove(joined)
        set_joining(previous)
        event.remove(connection.sync_connection, "savepoint", joined.take_turn)
