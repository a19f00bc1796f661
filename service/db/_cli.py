"""Command-line commands as units of work: an async body, run by a sync click callback.

A command commits when it succeeds (exit status 0) and rolls back on an exception
or a non-zero exit: a command that failed wrote nothing, as a request that
failed. Serialization failures and deadlocks re-run it.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from typing import Any, ParamSpec, TypeVar

import click

from service.db import _events
from service.db._context import Bind
from service.db._unit_of_work import unit_of_work

__all__ = ["Runner", "in_unit_of_work", "running_coroutines_with"]

_P = ParamSpec("_P")
_T = TypeVar("_T")

Runner = Callable[[Coroutine[Any, Any, Any]], Any]
"""Runs a command's coroutine to its end: ``asyncio.run``, or a test's loop."""

Setting = Callable[[], AbstractAsyncContextManager[Bind | None]]
"""Around each run: sets up what the command needs and yields its bind (``None``: the default)."""

_runner: Runner = asyncio.run

RETRIES = 3
"""Times a command is re-run after a serialization failure or deadlock."""


@contextmanager
def running_coroutines_with(runner: Runner) -> Iterator[None]:
    """Run the commands' coroutines with ``runner`` instead of ``asyncio.run`` (tests).

    The test plugin runs them on the test's own event loop, so that a command
    invoked in-process joins the test's transaction.
    """
    global _runner
    previous, _runner = _runner, runner
    try:
        yield
    finally:
        _runner = previous


class _Exiting(Exception):
    """Carries an exit out of the event loop, which lets no ``SystemExit`` out cleanly."""

    def __init__(self, exit: click.exceptions.Exit | SystemExit) -> None:
        super().__init__(exit)
        self.exit = exit


def in_unit_of_work(body: Callable[_P, Awaitable[_T]], *, setting: Setting) -> Callable[_P, _T]:
    """Make an async command body a click callback that runs as one unit of work."""

    @functools.wraps(body)
    def callback(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            # The setting is made here, in click's thread, where its context is.
            around = setting()
            return _runner(_run(body, around, *args, **kwargs))  # type: ignore[no-any-return]
        except _Exiting as exiting:
            raise exiting.exit from None

    return callback


async def _run(
    body: Callable[_P, Awaitable[_T]],
    around: AbstractAsyncContextManager[Bind | None],
    *args: _P.args,
    **kwargs: _P.kwargs,
) -> _T:
    successful_exit: list[click.exceptions.Exit | SystemExit] = []

    async def attempt() -> _T | None:
        try:
            return await body(*args, **kwargs)
        except (click.exceptions.Exit, SystemExit) as exit:
            code = exit.exit_code if isinstance(exit, click.exceptions.Exit) else exit.code
            if code not in (0, None):
                raise _Exiting(exit) from None  # a failure: roll back
            successful_exit.append(exit)
            return None

    async with around as bind:
        with _events.running_as("cli"):  # events: the entry point of the command's unit
            result = await unit_of_work(bind=bind, retries=RETRIES)(attempt)()
    if successful_exit:
        raise _Exiting(successful_exit[0])  # committed; now exit as asked
    return result  # type: ignore[return-value]
