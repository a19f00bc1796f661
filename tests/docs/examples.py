"""The documentation's examples, run as tests (Sybil): README.md and every page in docs/.

A page is read top to bottom as one module; each example is a test item, in order:

- A ``python`` block runs in the page's namespace. Top-level ``await`` (and ``async with``)
  works, as in ``python -m asyncio``: the block runs on the test session's event loop, in a
  task of its own. A block is made to fail with ``assert``.
- A block with a file name (```` ```python title="app.py" ````, any language) is written to
  the page's own directory instead, for a later block to use (``docs_page.path``).
- A ``console`` block is a shell session: each ``$ `` line (continued after a ``\\`` on
  lines starting ``> ``) runs in one bash, in the page's directory, and what it prints must
  match the lines below it
  (``...`` matches anything, as in doctest). ``http://127.0.0.1:8000`` in a command is the
  service the page served with ``await docs_page.serve_service()``.
- ``<!-- invisible-code-block: python ... -->`` runs code the reader does not see (setup,
  and checks that would clutter the page); ``<!-- skip: next -->`` skips the next block.

Each page works on the suite's test database with real commits, as production does: the
tables of its own models come from ``await docs_page.create_tables(...)`` and are dropped
after the page, and the service's tables are emptied.
"""

from __future__ import annotations

import ast
import asyncio
import doctest
import inspect
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import types
import urllib.request
from collections.abc import AsyncIterator, Coroutine, Iterable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import pytest_asyncio
from _pytest._code.code import Traceback
from quart import Quart
from sqlalchemy import Table
from sybil import Document, Example, Region, Sybil
from sybil.evaluators.python import pad
from sybil.integration.pytest import SybilFile, SybilItem
from sybil.parsers.markdown import ClearNamespaceParser, SkipParser
from sybil.parsers.markdown.lexers import DirectiveInHTMLCommentLexer, FencedCodeBlockLexer

from service.db import Model
from service.testing import TestDatabase

ROOT = Path(__file__).resolve().parents[2]
SERVED = "http://127.0.0.1:8000"
"""The address the pages give the service; a page's console blocks reach its own."""
_TITLE = re.compile(r'\btitle="([^"]+)"')
_OUTPUT = doctest.OutputChecker()
_OUTPUT_FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


class Page:
    """One page's run: its directory, its event loop, what it served and created."""

    def __init__(self, database: TestDatabase, loop: asyncio.AbstractEventLoop) -> None:
        self.database = database
        self.database_url = database.url
        self.loop = loop
        self.path = Path(tempfile.mkdtemp(prefix="docs-page-"))
        self.env = {
            **os.environ,
            "DATABASE_URL": database.url,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            # Not the page's own directory: its commands find its modules as a reader's would.
            "PYTHONPATH": str(ROOT),
        }
        self.base_url: str | None = None
        self._tables: list[Table] = []
        self._apps: list[Any] = []
        self._processes: list[asyncio.subprocess.Process] = []

    def run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        """Run a block's coroutine on the session's loop (idle between tests)."""
        return self.loop.run_until_complete(coroutine)

    async def create_tables(self, *models: type[Model]) -> None:
        """Create the tables of a page's own models (dropped after the page)."""
        tables = [cast(Table, model.__table__) for model in models]
        async with self.database.engine.begin() as connection:
            for table in tables:
                await connection.run_sync(table.create)
        self._tables += tables

    async def serve(self, app: Quart) -> None:
        """Start serving ``app`` (its lifespan, as Hypercorn would); stopped after the page."""
        test_app = app.test_app()
        await test_app.startup()
        self._apps.append(test_app)

    async def serve_service(self, **env: str) -> None:
        """The service itself under ``service serve``, on a SQLite file of the page's own."""
        environment = {
            **self.env,
            "DATABASE_URL": f"sqlite+aiosqlite:///{self.path / 'service.db'}",
            "ACCESS_LOG": "false",
            **env,
        }
        self.env = environment
        await self.shell("service db upgrade")
        port = _free_port()
        with (self.path / "service.log").open("wb") as log:  # the child keeps its own copy
            process = await asyncio.create_subprocess_exec(
                "service",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                cwd=self.path,
                env=environment,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._processes.append(process)
        self.base_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while not await asyncio.to_thread(_answers, f"{self.base_url}/healthz"):
            if process.returncode is not None or time.monotonic() > deadline:
                raise AssertionError(f"the service did not start: see {self.path}/service.log")
            await asyncio.sleep(0.1)

    async def shell(self, command: str) -> str:
        """Run ``command`` in bash in the page's directory; its output, or a failure."""
        process = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            command,
            cwd=self.path,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await process.communicate()
        text = out.decode()
        if process.returncode != 0:
            raise AssertionError(f"`{command}` exited {process.returncode}:\n{text}")
        return text

    async def close(self) -> None:
        for process in self._processes:
            process.terminate()
            await process.wait()
        for test_app in reversed(self._apps):
            await test_app.shutdown()
        async with self.database.engine.begin() as connection:
            for table in reversed(self._tables):
                await connection.run_sync(table.drop)
            for table in reversed(self.database.tables):
                await connection.execute(table.delete())
        shutil.rmtree(self.path, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except OSError:
        return False


class PageModule(Document):
    """A page's namespace is a module of its own, so that models defined on it resolve
    their annotations as in any module."""

    def __init__(self, text: str, path: str) -> None:
        super().__init__(text, path)
        name = "docs_" + re.sub(r"\W", "_", str(Path(path).relative_to(ROOT).with_suffix("")))
        module = types.ModuleType(name)
        sys.modules[name] = module
        self.namespace = module.__dict__


def _page(example: Example) -> Page:
    page: Page = example.namespace["docs_page"]
    return page


def evaluate_python(example: Example) -> None:
    """Run a Python block in the page's namespace, awaiting it if it awaits."""
    __tracebackhide__ = True
    source = pad(example.parsed, example.line + example.parsed.line_offset)
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    code = compile(source, example.path, "exec", flags=flags, dont_inherit=True)
    result = eval(code, example.namespace)
    if inspect.iscoroutine(result):
        _page(example).run(result)


def write_file(example: Example) -> None:
    """Write a titled block to the page's directory, as the reader would save it."""
    name = example.region.lexemes["file"]
    target = _page(example).path / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(example.parsed)


def run_console(example: Example) -> None:
    """Run a console block's commands in one bash and compare what each printed with the page."""
    __tracebackhide__ = True
    page = _page(example)
    steps = _session(example.parsed)
    script = []  # no `set -e`: a command that fails shows its error, as it would to the reader
    for command, _ in steps:
        if page.base_url is not None:
            command = command.replace(SERVED, page.base_url)
        script += [f"printf '\\n%s\\n' {_MARK}", command]
    output = page.run(page.shell("\n".join(script)))
    printed = output.split(f"\n{_MARK}\n")[1:]
    for (command, expected), got in zip(steps, printed, strict=True):
        if not _OUTPUT.check_output(expected.strip(), got.strip(), _OUTPUT_FLAGS):
            raise AssertionError(
                f"{example.path}:{example.line}: `{command}` printed\n{got.strip()}\n"
                f"where the page shows\n{expected.strip()}"
            )


_MARK = "__docs_next_command__"


def _session(text: str) -> list[tuple[str, str]]:
    """The ``$ `` commands of a console block, each with the output the page shows."""
    steps: list[tuple[str, str]] = []
    continued = False
    for line in text.splitlines():
        if continued:  # the shell's `> ` prompt, then the rest of the command
            steps[-1] = (steps[-1][0] + "\n" + line.removeprefix("> "), "")
        elif line.startswith("$ "):
            steps.append((line[2:], ""))
        elif steps:
            steps[-1] = (steps[-1][0], steps[-1][1] + line + "\n")
        elif line.strip():
            raise ValueError(f"a console block starts with a `$ ` command, not {line!r}")
        continued = bool(steps) and line.endswith("\\") and not steps[-1][1]
    return steps


class CodeBlocks:
    """Fenced blocks: Python is run, titled blocks written, console sessions replayed."""

    def __init__(self) -> None:
        self.fences = FencedCodeBlockLexer(language=r".+")
        self.hidden = DirectiveInHTMLCommentLexer(directive="invisible-code-block", arguments=".+")

    def __call__(self, document: Document) -> Iterable[Region]:
        for region in self.fences(document):
            info = str(region.lexemes["language"]).strip()
            language = info.split()[0] if info else ""
            title = _TITLE.search(info)
            region.parsed = region.lexemes["source"]
            if title is not None:
                region.lexemes["file"] = title.group(1)
                region.evaluator = write_file
            elif language in ("python", "py"):
                region.evaluator = evaluate_python
            elif language == "console":
                region.evaluator = run_console
            else:
                continue
            yield region
        for region in self.hidden(document):
            if str(region.lexemes["arguments"]).strip() == "python":
                region.parsed = region.lexemes["source"]
                region.evaluator = evaluate_python
                yield region


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def docs_page(service_database: TestDatabase) -> AsyncIterator[Page]:
    """The page being run: its directory, database and served apps, closed after it."""
    page = Page(service_database, asyncio.get_running_loop())
    previous = os.environ.get("DATABASE_URL")
    os.environ["DATABASE_URL"] = service_database.url  # a page's scripts use the test database
    try:
        yield page
    finally:
        if previous is None:
            os.environ.pop("DATABASE_URL", None)
        else:
            os.environ["DATABASE_URL"] = previous
        await page.close()


class PageItem(SybilItem):
    """An example; of its fixtures only ``docs_page`` enters the page's namespace (Sybil would
    put every fixture it depends on there, ``request`` included, over the page's own names)."""

    def setup(self) -> None:
        self._request._fillfixtures()
        self.example.namespace["docs_page"] = self.funcargs["docs_page"]

    def _traceback_filter(self, excinfo: pytest.ExceptionInfo[BaseException]) -> Traceback:
        try:
            return super()._traceback_filter(excinfo)
        except IndexError:  # Sybil's filter expects a frame of the example's own
            return excinfo.traceback


class PageFile(SybilFile):
    def collect(self) -> Iterator[PageItem]:
        for sybil in self.sybils:
            document = sybil.parse(self.path)
            self.documents.append(document)
            for example in document.examples():
                yield PageItem.from_parent(self, sybil=sybil, example=example)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> PageFile | None:
    """Collect README.md and the pages of docs/ (the top conftest.py hands this to pytest)."""
    if not sybil.should_parse(file_path):
        return None
    file: PageFile = PageFile.from_parent(parent, path=file_path, sybils=[sybil])
    return file


sybil = Sybil(
    parsers=[CodeBlocks(), SkipParser(), ClearNamespaceParser()],
    path=str(ROOT),
    patterns=["README.md", "docs/*.md", "docs/*/*.md"],
    excludes=["docs/benchmarks/*/*.md"],
    fixtures=["docs_page"],
    document_types={".md": PageModule},
)
