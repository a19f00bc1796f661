"""With CI=true an unreachable test database fails the run; it is never skipped there."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNREACHABLE = "postgresql+asyncpg://postgres@127.0.0.1:1/test"


async def _pytest(ci: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "tests/test_app.py::test_healthz_answers_while_the_process_is_up",
        cwd=ROOT,
        env={**os.environ, "TEST_DATABASE_URL": UNREACHABLE, "CI": ci},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, output.decode()


@pytest.mark.service_committing  # touches no database of its own; no outer transaction needed
@pytest.mark.timeout(180)  # a pytest run of its own: slow on a busy machine
async def test_an_unreachable_database_fails_the_run_under_ci() -> None:
    code, output = await _pytest(ci="true")
    assert code == 1, output
    assert "unreachable" in output and "CI=true" in output

    code, output = await _pytest(ci="")
    assert code == 0, output
    assert "1 skipped" in output
