"""The reliability suite: real Hypercorn processes, real signals, a private PostgreSQL.

Run it with ``make test-reliability``. Each test records its figures with the
``figures`` fixture; they are printed after the run, next to each verdict.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from _pytest.terminal import TerminalReporter

from bench.harness import prepare_database
from reliability.postgres import PrivateCluster, find_postgres_bin

Figures = Callable[[str, object], None]
NewDatabase = Callable[[str], Awaitable[str]]
_numbers = itertools.count()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PrivateCluster]:
    """A PostgreSQL cluster of the suite's own, which the outage test may stop at will."""
    bin_dir = find_postgres_bin()
    if bin_dir is None or not (bin_dir / "initdb").exists():
        message = "PostgreSQL's initdb/pg_ctl were not found (set POSTGRES_BIN)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; CI=true: a missing PostgreSQL fails the run", pytrace=False)
        pytest.skip(message)
    cluster = PrivateCluster(bin_dir)
    try:
        cluster.create()
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def new_database(request: pytest.FixtureRequest, tmp_path: Path) -> NewDatabase:
    """``await new_database("sqlite" | "postgresql")``: the URL of an empty, migrated database."""

    async def make(backend: str) -> str:
        name = f"reliability_{next(_numbers)}"
        if backend == "sqlite":
            url = f"sqlite+aiosqlite:///{tmp_path}/{name}.db"
        else:
            cluster: PrivateCluster = request.getfixturevalue("postgres")
            url = cluster.url(name)
        await prepare_database(url)
        return url

    return make


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Figures:
    """``figures(name, value)``: a figure of this test, printed in the run's summary."""

    def record(name: str, value: object) -> None:
        request.node.user_properties.append((name, value))

    return record


def pytest_terminal_summary(terminalreporter: TerminalReporter) -> None:
    reports = [
        report
        for outcome in ("passed", "failed", "skipped")
        for report in terminalreporter.stats.get(outcome, [])
        if getattr(report, "when", None) == "call" and report.user_properties
    ]
    if not reports:
        return
    terminalreporter.section("reliability figures")
    for report in sorted(reports, key=lambda report: report.nodeid):
        verdict = "PASS" if report.passed else "FAIL"
        terminalreporter.write_line(f"{verdict}  {report.nodeid}")
        for name, value in report.user_properties:
            terminalreporter.write_line(f"        {name}: {value}")
