"""What the plugin's fixtures hand out, importable without pytest-asyncio."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import click
from click.testing import CliRunner, Result
from quart import Quart
from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db.testing import (
    CapturedCallbacks,
    assert_max_queries,
    count_queries,
    running_coroutines_with,
)

__all__ = ["COMMITTING", "CaptureOnCommit", "Cli", "Queries", "TestDatabase"]

COMMITTING = "service_committing"

CaptureOnCommit = Callable[..., AbstractContextManager[CapturedCallbacks]]
"""The type of ``service_on_commit``: ``capture_on_commit(*, execute=False)``."""


@dataclass(frozen=True)
class TestDatabase:
    """The session's database: its engine, and its tables in dependency order."""

    __test__ = False  # not a test class, for pytest

    url: str
    engine: AsyncEngine
    tables: Sequence[Table]


class Cli:
    """Invokes CLI commands in-process; their units of work join the test's transaction.

    The commands are the ``service_cli`` ini option's click group, or else the app's own
    (``app.cli``, where ``Database.command`` puts its commands).
    """

    def __init__(self, app: Quart, group: click.Command | None, database_url: str) -> None:
        self.app = app
        self.group = group
        self.database_url = database_url

    async def invoke(self, *args: str, input: str | None = None) -> Result:
        """Run a command: exit code, output and exception as ``click.testing`` has them."""
        loop = asyncio.get_running_loop()

        def on_the_tests_loop(coroutine: Coroutine[Any, Any, Any]) -> Any:
            return asyncio.run_coroutine_threadsafe(coroutine, loop).result()

        def invoke() -> Result:
            if self.group is None:
                runner = self.app.test_cli_runner()
                result: Result = runner.invoke(args=list(args), input=input)
                return result
            return CliRunner().invoke(
                self.group, list(args), input=input, env={"DATABASE_URL": self.database_url}
            )

        with running_coroutines_with(on_the_tests_loop):
            # click runs in a thread while this loop runs the command's coroutine.
            return await asyncio.to_thread(invoke)


class Queries:
    """``at_most(n)`` asserts a block's query count; ``count()`` only records."""

    at_most = staticmethod(assert_max_queries)
    count = staticmethod(count_queries)
