"""What every part of the layer shares: the current unit of work, the layer's errors, and the
hooks through which integrations and test support take part. It imports nothing of the layer.

The modules above it run one way, from the drivers and engines, through the session, to the
unit of work, the models, and the integrations (Quart, the CLI, tests): a lower module learns
what it needs of the unit of work through the ``Unit`` protocol here, never by importing it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

__all__ = [
    "CHILD_OF_WRITER",
    "Bind",
    "Context",
    "RolledBackError",
    "Unit",
    "UnitHooks",
    "UnitOfWorkError",
    "acquire_unless_awaited",
    "add_context",
    "ancestor_tasks",
    "awaited_by",
    "context_bind",
    "current",
    "current_unit_of_work",
    "outside_message",
    "unit_hooks",
]

Bind = AsyncEngine | AsyncConnection


class UnitOfWorkError(RuntimeError):
    """The database was used where no unit of work owns the session."""


class RolledBackError(UnitOfWorkError):
    """A unit of work could not end with success: a failure had rolled back its earlier writes.

    A statement or flush failed outside any savepoint, which rolls back the whole
    transaction, and the code caught the error and went on. Committing then would
    report as saved the writes that were made before the failure and are gone, so
    nothing is committed and this is raised instead. ``cause`` is the failure.
    """

    def __init__(self, cause: Exception) -> None:
        self.cause = cause
        super().__init__(
            f"{type(cause).__name__} rolled back this unit of work's earlier writes, and the "
            "code caught it and went on; nothing was committed. To contain a failure that the "
            "code handles, make the attempt in a savepoint: `async with unit_of_work(): ...` "
            "inside the unit of work, with the `try` around that block."
        )


class Unit(Protocol):
    """What the layer's lower modules see of a unit of work (``_unit.UnitOfWork``)."""

    task: asyncio.Task[Any]
    readonly: bool
    bind: Bind | None
    parent: Unit | None
    session: AsyncSession | None
    ending: bool
    entry: str

    def ancestors(self) -> Iterator[Unit]: ...

    async def end(self, *, commit: bool, status: int | None = None) -> None: ...

    async def wait_ended(self) -> None: ...


current: ContextVar[Unit | None] = ContextVar("service_db_unit_of_work", default=None)
"""The unit of work active in this context. Context variables are copied into child tasks,
so the owner task is checked too: a copy seen from another task means "child task of a unit
of work", not "inside one"."""


def current_unit_of_work() -> Unit | None:
    """The unit of work that owns the current task, or ``None``."""
    unit = current.get()
    if unit is None or unit.task is not asyncio.current_task():
        return None
    return unit


def ancestor_tasks() -> Iterator[asyncio.Task[Any]]:
    """The tasks of the units of work this context's unit was started from, nearest first."""
    unit = current.get()
    if unit is not None and unit.task is asyncio.current_task():
        unit = unit.parent
    while unit is not None:
        yield unit.task
        unit = unit.parent


# Integrations ---------------------------------------------------------------------------------

_OUTSIDE = (
    "The database session was used outside a unit of work. HTTP request handlers served by "
    "`Database` get one per request. Anywhere else (a websocket handler: one per message; a "
    "streamed response's body; a background task; a before_serving hook; a CLI command; a "
    "script, a job, a test) wrap the code in `async with unit_of_work(): ...` or decorate the "
    "coroutine with `@unit_of_work()`."
)


class Context(Protocol):
    """Where an integration (the Quart binding) tells the layer about the code running now."""

    async def bind(self) -> Bind | None:
        """The engine a unit of work begun here uses by default (the current app's), if any."""

    def describe(self) -> str | None:
        """What is running here (a websocket handler, say), for the error outside a unit."""


_contexts: list[Context] = []


def add_context(context: Context) -> None:
    """Let ``context`` choose default engines and explain errors (once per context)."""
    if context not in _contexts:
        _contexts.append(context)


async def context_bind() -> Bind | None:
    """The bind the integrations choose for a unit of work begun here, if any."""
    for context in _contexts:
        bind = await context.bind()
        if bind is not None:
            return bind
    return None


def outside_message() -> str:
    """The error for the session used outside a unit of work, naming where, if known."""
    for context in _contexts:
        described = context.describe()
        if described is not None:
            return f"{_OUTSIDE} Here: {described}"
    return _OUTSIDE


class UnitHooks(Protocol):
    """Told when a unit of work ends: test support sharing one connection between units."""

    async def ending(self, unit: Unit) -> None:
        """``unit``'s end has begun, before its COMMIT or ROLLBACK (may wait)."""

    def ended(self, unit: Unit) -> None:
        """``unit`` has ended and closed its session."""


unit_hooks: list[UnitHooks] = []
"""Installed by test support (``service.db.testing``); empty in production."""


# Child tasks and the locks their parents hold -------------------------------------------------

CHILD_OF_WRITER = (
    "A unit of work in a child task cannot write to SQLite while its parent's unit of work "
    "holds the write lock and waits for the child (asyncio.gather, a TaskGroup, `await "
    "task`): SQLite has one writer at a time, so neither could ever go on. Run the children "
    "before the parent writes (a POST request's unit of work takes the lock at its first "
    "query), do the work in the parent, or start work that need not be waited for with "
    "`app.add_background_task` (or a task nobody awaits): it then waits for the parent's "
    "commit."
)
_WATCH_INTERVAL = 0.02
"""Seconds between two looks, while a child waits for its parent's lock, at who waits for it."""


def awaited_by(task: asyncio.Task[Any], parent: asyncio.Task[Any]) -> bool:
    """Whether ``parent`` waits, or may wait, for ``task`` to finish.

    Read off ``task``'s done callbacks (asyncio keeps them in ``_callbacks``): the
    parent's wake-up when it awaits the task itself, its TaskGroup's, and those of
    ``gather``, ``wait`` and ``wait_for``, whichever task awaits those. A callback
    that only drops the task from a collection (the recipe for tasks nobody
    awaits: ``tasks.add(task); task.add_done_callback(tasks.discard)``) is no wait.
    """
    for callback, _ in getattr(task, "_callbacks", None) or ():
        owner = getattr(callback, "__self__", None)
        if isinstance(owner, set | list | dict):
            continue
        if owner is parent or getattr(owner, "_parent_task", parent) is parent:
            return True  # `await task`, a TaskGroup of the parent's, gather, wait, wait_for
    return False


async def acquire_unless_awaited(lock: asyncio.Lock, holder: asyncio.Task[Any]) -> None:
    """Take ``lock``, held by ``holder``, an ancestor of this task: unless it waits for us.

    A parent that waits for its child while holding the lock the child needs
    would wait forever, so that is refused with ``UnitOfWorkError`` as soon as it
    shows (at once for gather and TaskGroup, within a moment for a later
    ``await task``); a child nobody waits for queues until the parent is done.
    """
    me = asyncio.current_task()
    assert me is not None
    if awaited_by(me, holder):
        raise UnitOfWorkError(CHILD_OF_WRITER)
    acquiring = asyncio.ensure_future(lock.acquire())
    try:
        while not acquiring.done():
            await asyncio.wait({acquiring}, timeout=_WATCH_INTERVAL)
            if not acquiring.done() and awaited_by(me, holder):
                raise UnitOfWorkError(CHILD_OF_WRITER)
        acquiring.result()
    except BaseException:
        if acquiring.done() and not acquiring.cancelled() and acquiring.exception() is None:
            lock.release()
        else:
            acquiring.cancel()
        raise
