"""Read-your-writes with replicas: the causal token, kept per caller in Redis and per client.

A unit of work that committed on a primary with replicas reads the primary's
WAL insert position right after its COMMIT: every later read that must see the
write needs a server that has replayed that far. The position is kept

- for the caller the app names (``await caller(key)``: the service names the
  authenticated user), in Redis with a TTL, never lowered and never cleared by
  a replica catching up (the TTL outlives ``DATABASE_REPLICA_MAX_LAG``, past
  which a replica leaves the rotation anyway);
- for the client, in the ``Causal-Token`` response header, which a client
  may send back (it then reads its writes through any host, Redis or not);
- for the rest of the request or job (``Reading.floor``).

Each request, and each job delivery, has one ``Reading`` (a context variable):
the floor its read-only units must see. A read-only unit reads from a replica
whose polled position has reached the floor (``_replicas``), else from the
primary. Outside a request or a job there is no floor to go by, and read-only
units read from the primary.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import ORMExecuteState, Session, SessionTransaction
from sqlalchemy.util import await_

from service.db import _events as events
from service.db._context import Unit, current_unit_of_work
from service.db._outage import is_outage
from service.db._replicas import (
    PRIMARY_ONLY,
    ReplicaSet,
    format_position,
    parse_position,
)
from service.db._session import READONLY, _Session

__all__ = [
    "HEADER",
    "Headers",
    "Reading",
    "caller",
    "read_from_primary",
    "reading_after",
    "register",
    "route",
    "unregister",
]

HEADER = "Causal-Token"
"""The response header of a request that committed a write, and the request header a client
may send back: the primary's WAL position after that write (``16/B374D848``)."""

logger = logging.getLogger("service.db.replicas")

_WROTE = "service.db.causal.wrote"
_COUNTED = "service.db.causal.counted"  # in a read-only session's info: where it was counted
_RECOVERY_CONFLICT = "40001"  # on a standby: a query cancelled by a conflict with recovery


@dataclass
class Reading:
    """The causal state of one request or job: what its reads must see, what it wrote."""

    floor: int = 0
    """The WAL position every read-only unit here must see: 0 is any replica in rotation."""
    record: bool = True
    """Read the primary's position after each commit (a request: for its header and caller)."""
    caller: str | None = None
    committed: int | None = None
    """The primary's position after this context's latest commit."""
    chosen: dict[int, tuple[int, str | None]] = field(default_factory=dict)
    """Per read-only unit (by id): the position its server had reached when it was chosen,
    and why it is the primary, if it is."""


class Headers(Protocol):
    """A request's or a response's headers, as the web framework has them."""

    def get(self, key: str) -> str | None: ...

    def __setitem__(self, key: str, value: str) -> None: ...


_reading: ContextVar[Reading | None] = ContextVar("service_db_reading", default=None)

# Every replica set of the process, by the read bind of its primary and of each replica.
_sets: dict[object, ReplicaSet] = {}
# The set of each primary engine (the sync engine a writing unit's connection has).
_primaries: dict[object, ReplicaSet] = {}
_installed = False


def register(replicas: ReplicaSet) -> None:
    """Route to ``replicas`` from now on (``_replica_start``)."""
    _install_listeners()
    _sets[replicas.primary_reads] = replicas
    for replica in replicas.replicas:
        _sets[replica.reads] = replicas
    _primaries[replicas.primary.sync_engine] = replicas


def unregister(replicas: ReplicaSet) -> None:
    for bind in [bind for bind, found in _sets.items() if found is replicas]:
        del _sets[bind]
    _primaries.pop(replicas.primary.sync_engine, None)


def route(unit: Unit) -> Any:
    """The bind of a new read-only unit: a replica that has its reading's floor, if any.

    Called as the unit is made. Costs a truth test when no replica is configured,
    and never a round trip.
    """
    if not _sets:
        return unit.bind
    replicas = _sets.get(unit.bind)
    if replicas is None and unit.parent is not None:
        # A unit in a child task (no bind of its own) reads the database of the unit it was
        # started from, as that unit's replicas allow.
        replicas = _sets.get(unit.parent.bind) or _primaries.get(
            getattr(unit.parent.bind, "sync_engine", None)
        )
    elif replicas is not None and unit.bind is not replicas.primary_reads:
        return unit.bind  # a replica's bind, given explicitly
    reading = _reading.get()
    if replicas is None or reading is None:
        return unit.bind  # no replicas; or no request or job to know the caller's writes by
    chosen, position, why = replicas.choose(reading.floor)
    reading.chosen[id(unit)] = (position, why)
    return chosen


def begin_request(headers: Headers) -> None:
    """A request begins: its floor is the token its client sent back, if any."""
    floor = 0
    token = headers.get(HEADER)
    if token:
        try:
            floor = parse_position(token)
        except ValueError:
            logger.info("ignoring a malformed %s header: %r", HEADER, token[:40])
    _reading.set(Reading(floor=floor))


async def end_request(replicas: ReplicaSet, headers: Headers) -> None:
    """The request's unit of work has committed: give its position to the client and caller."""
    reading = _reading.get()
    if reading is None or reading.committed is None:
        return
    position = reading.committed
    if position != PRIMARY_ONLY:
        headers[HEADER] = format_position(position)
    if reading.caller is not None:
        try:
            await replicas.store.record(reading.caller, position)
        except Exception:
            # The write stands; the caller's next reads may miss it on another host for as
            # long as a replica lags (a client sending the header back still reads it).
            logger.exception("could not record the caller's position in Redis")


@contextmanager
def reading_after(position: int | str | None) -> Iterator[Reading]:
    """Read-only units in the block see at least ``position`` (a job: where it was claimed).

    ``None``: what the enclosing request or job must see, if there is one, else
    the primary. Nothing is recorded after the block's commits.
    """
    outer = _reading.get()
    if isinstance(position, str):
        position = parse_position(position)
    if position is None:
        position = outer.floor if outer is not None else PRIMARY_ONLY
    elif outer is not None:
        position = max(position, outer.floor)
    reading = Reading(floor=position, record=False)
    token = _reading.set(reading)
    try:
        yield reading
    finally:
        _reading.reset(token)


async def caller(key: str) -> bool:
    """Name the caller of the current request or job: its reads see the caller's writes.

    A read-only unit's floor rises to the position last recorded for ``key``;
    what a writing unit commits is recorded for ``key``. If the unit has already
    read from a replica that had not reached that position, its later statements
    go to one that has (or to the primary), and ``True`` says so: read again what
    must be fresh. Does nothing where no replica is configured.
    """
    reading = _reading.get()
    if reading is None or reading.caller == key:
        return False
    reading.caller = key
    unit = current_unit_of_work()
    replicas = _sets.get(unit.bind) if unit is not None and unit.readonly else None
    if unit is None or replicas is None:
        return False
    why = "behind"
    try:
        stored = await replicas.store.get(key)
    except Exception:
        logger.warning("could not read the caller's position from Redis", exc_info=True)
        stored, why = PRIMARY_ONLY, "no_position"
    if stored is None or stored <= reading.floor:
        return False
    reading.floor = stored
    return _reroute(unit, replicas, reading, why)


async def read_from_primary() -> bool:
    """Send the current read-only unit's later statements to the primary.

    ``True`` if it was on a replica: what it read there may be older than the
    primary (a row not found may be too new for the replica), so read it again.
    Does nothing where no replica is configured.
    """
    unit = current_unit_of_work()
    replicas = _sets.get(unit.bind) if unit is not None and unit.readonly else None
    if unit is None or replicas is None or unit.bind is replicas.primary_reads:
        return False
    _move(unit, replicas, replicas.primary_reads, "asked")
    return True


def _reroute(unit: Unit, replicas: ReplicaSet, reading: Reading, why: str) -> bool:
    """The floor rose: keep the unit's server if it had reached it when chosen, else move."""
    on_primary = unit.bind is replicas.primary_reads
    had, _ = reading.chosen.get(id(unit), (PRIMARY_ONLY if on_primary else 0, None))
    if had >= replicas.settled(reading.floor):
        return False
    chosen, position, chosen_why = replicas.choose(reading.floor)
    reading.chosen[id(unit)] = (position, chosen_why and why)
    read_before = unit.session is not None
    _move(unit, replicas, chosen, chosen_why and why)
    return read_before


def _move(unit: Unit, replicas: ReplicaSet, bind: AsyncEngine, why: str | None) -> None:
    """Later statements of ``unit`` go to ``bind`` (``why``: why the primary, if it is)."""
    # The session's connection to the old server stays checked out (idle, in autocommit)
    # until the unit ends.
    reading = _reading.get()
    if reading is not None and id(unit) in reading.chosen:
        position, _ = reading.chosen[id(unit)]
        reading.chosen[id(unit)] = (position, why)
    unit.bind = bind
    if unit.session is None:
        return
    unit.session.sync_session.bind = bind.sync_engine
    counted = unit.session.info.get(_COUNTED)
    if counted is not None:  # it has read already: it counts where it reads from now on
        replicas.stats.reads[counted] -= 1
        _count(replicas, unit.session.info, replicas.server_name(bind), why, counted)


def _count(
    replicas: ReplicaSet,
    info: dict[Any, Any],
    server: str,
    why: str | None,
    moved_from: str | None = None,
) -> None:
    info[_COUNTED] = server
    replicas.stats.reads[server] += 1
    fallback = None
    if server == "primary":
        fallback = why or "outside"
        replicas.stats.fallbacks[fallback] += 1
    if events.replica_read:
        events.replica_read.send(events.ReplicaRead(server, fallback, moved_from))


# The listeners: installed once, when the first replica set is registered.


def _install_listeners() -> None:
    global _installed
    if _installed:
        return
    _installed = True
    event.listen(_Session, "do_orm_execute", _run_again_on_primary)
    event.listen(_Session, "after_begin", _note_writer)
    event.listen(_Session, "after_commit", _record_position)
    event.listen(_Session, "after_rollback", _forget_writer)


def _run_again_on_primary(state: ORMExecuteState) -> Any:
    """Counts the read-only units that read, where they read; and a read-only statement that
    fails on a replica is run again on the primary."""
    info = state.session.info
    if not _sets or not info.get(READONLY):
        return None
    unit = current_unit_of_work()
    replicas = None if unit is None else _sets.get(unit.bind)
    if unit is None or replicas is None:
        return None
    if _COUNTED not in info:
        reading = _reading.get()
        why = None if reading is None else reading.chosen.get(id(unit), (0, None))[1]
        _count(replicas, info, replicas.server_name(unit.bind), why)
    replica = replicas.replica_of(unit.bind)
    if replica is None:
        return None
    try:
        return state.invoke_statement()
    except Exception as error:
        if not _replica_failure(error):
            raise
        logger.warning("a read failed on replica %s; running it on the primary", replica.name)
        replicas.failed(replica, error)
        _move(unit, replicas, replicas.primary_reads, "failed")
        return state.invoke_statement(bind_arguments={"bind": replicas.primary_reads.sync_engine})


def _replica_failure(error: BaseException) -> bool:
    if is_outage(error):
        return True
    cause: BaseException | None = error
    while cause is not None:
        if getattr(cause, "sqlstate", None) == _RECOVERY_CONFLICT:
            return True
        cause = cause.__cause__
    return False


def _note_writer(session: Session, transaction: SessionTransaction, connection: Connection) -> None:
    # A writing unit's transaction began on a primary with replicas, in a request: the
    # position after its commit will be wanted.
    if session.info.get(READONLY):
        return
    replicas = _primaries.get(connection.engine)
    reading = _reading.get()
    if replicas is not None and reading is not None and reading.record:
        session.info[_WROTE] = (replicas, connection)


def _forget_writer(session: Session) -> None:
    if not session.in_nested_transaction():
        session.info.pop(_WROTE, None)


def _record_position(session: Session) -> None:
    """After the COMMIT, on the same connection: the primary's WAL insert position.

    Any position read after the COMMIT returned is at or past the commit's own
    record. One round trip, in the greenlet of the commit; a failure costs the
    caller its replica reads (the primary, until the position expires), never the
    commit.
    """
    if session.in_nested_transaction():
        return
    wrote = session.info.pop(_WROTE, None)
    reading = _reading.get()
    if wrote is None or reading is None:
        return
    replicas, connection = wrote
    try:
        driver = connection.connection.driver_connection
        position = int(await_(driver.fetchval("SELECT pg_current_wal_insert_lsn()")))
    except Exception:
        logger.warning("could not read the primary's position after a commit", exc_info=True)
        position = PRIMARY_ONLY
    replicas.stats.positions_recorded += 1
    reading.committed = max(reading.committed or 0, position)
    reading.floor = max(reading.floor, position)
