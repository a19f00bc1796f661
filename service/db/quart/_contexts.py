"""Units of work outside the HTTP request: what the Quart binding tells the layer.

An app's units of work use that app's engine wherever they begin in its context
(a websocket handler, a background task, a ``before_serving`` hook, a CLI
command), and the error for a unit of work missing there names the place. A
background task started while a unit of work is open waits until that unit has
ended, then runs units of its own: it sees what the request committed, and on
SQLite it does not wait for a write lock its request holds.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from quart import current_app, has_app_context, has_request_context, has_websocket_context

from service.db import _events
from service.db._context import Bind, add_context, current
from service.db._engine import engine_for_loop, engine_options

if TYPE_CHECKING:
    from quart import Quart

__all__ = ["EXTENSION", "detach_background_task", "install", "websocket_entry"]

EXTENSION = "service.db"
"""The key of a ``Database``'s per-app state in ``app.extensions``."""

_WEBSOCKET = (
    "a websocket handler, which has no unit of work of its own: open one per message, "
    "`async with unit_of_work(): ...` around each message's database work (never around "
    "`websocket.receive()`), so that each message commits on its own and no transaction "
    "stays open between messages."
)
_AFTER_REQUEST = (
    "the request's unit of work has already ended: a streamed response's body runs after "
    "it. Read in the generator inside `async with unit_of_work(readonly=True): ...`, with "
    "`Model.query.stream()` for many rows."
)
_APP_CONTEXT = (
    "the app's context outside a request: a background task, a before_serving or "
    "after_serving hook, or a CLI command (see `Database.command`). Decorate the coroutine "
    "with `@unit_of_work()` or wrap its database work in `async with unit_of_work(): ...`; "
    "it uses this app's DATABASE_URL."
)


class _QuartContext:
    """The layer's view of Quart's contexts (``service.db._session.Context``)."""

    async def bind(self) -> Bind | None:
        if not has_app_context():
            return None
        state = current_app.extensions.get(EXTENSION)
        if state is None:
            return None
        serving: Bind | None = state.engine
        if serving is not None:
            return serving
        # Not serving (a CLI command, a script in an app context): an engine for this loop.
        config = current_app.config
        return await engine_for_loop(
            config["DATABASE_URL"], **{**engine_options(config), **state.options}
        )

    def describe(self) -> str | None:
        if has_websocket_context():
            return _WEBSOCKET
        if has_request_context():
            return _AFTER_REQUEST
        if has_app_context():
            return _APP_CONTEXT
        return None


_context = _QuartContext()


def install() -> None:
    """Tell the layer about Quart's contexts (idempotent)."""
    add_context(_context)


async def detach_background_task(sender: Quart, **extra: Any) -> None:
    """``appcontext_pushed``: a background task waits for the unit of work it was started in.

    Quart starts ``add_background_task`` work at once, in a task that inherits the
    request's context, unit of work included. Left so, it would run concurrently
    with that unit as its child: on PostgreSQL it could not see the request's
    writes, and on SQLite it could not write while the request holds the lock.
    Instead it waits for that unit of work to end, then leaves it.
    """
    task = asyncio.current_task()
    if task not in sender.background_tasks:
        return
    _events.entry_point.set("background")  # events: this task's units of work
    unit = current.get()
    if unit is None or unit.task is task:
        return
    await unit.wait_ended()
    current.set(None)


async def websocket_entry(sender: Quart, **extra: Any) -> None:
    """``websocket_started``: the socket's units of work are the "websocket" entry point."""
    _events.entry_point.set("websocket")
