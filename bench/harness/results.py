"""What a benchmark measured, as Markdown: printed, and written to its committed results file.

Every benchmark writes ``docs/benchmarks/results/<name>.md`` itself: figures are
never pasted by hand. The file says when, on which commit and machine, and how
(the plan): a ``--quick`` run is marked as a smoke check, not a measurement.
"""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from bench.harness.servers import ROOT

__all__ = ["RESULTS", "commit", "markdown_table", "write_results"]

RESULTS = ROOT / "docs" / "benchmarks" / "results"


def commit(root: Path = ROOT) -> str:
    """The short commit of ``root``; ``+changes`` when its work tree differs from it (the
    results files aside, which the benchmarks themselves rewrite)."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        return done.stdout.strip()

    found = git("rev-parse", "--short", "HEAD") or "unknown"
    if git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!docs/benchmarks"):
        found += "+changes"
    return found


def markdown_table(
    header: Sequence[str], rows: Sequence[Sequence[object]], *, left: int = 1
) -> str:
    """A Markdown table; the first ``left`` columns left-aligned, the others right-aligned."""
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + " --- |" * left + " ---: |" * (len(header) - left))
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _machine() -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (
        f"{os.cpu_count()} CPUs, {platform.system()} {platform.machine()}, Python "
        f"{platform.python_version()}; load average at the end {load}"
    )


def write_results(name: str, how: str, body: str, *, quick: bool = False) -> Path:
    """Print ``body`` and write it, under a header, to ``docs/benchmarks/results/<name>.md``.

    ``how`` says what was run and how (the command, the plan); ``body`` is the
    benchmark's Markdown (tables, notes). No heading: the benchmarks page that
    includes the file gives it one.
    """
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    header = [f"Written by `python bench/{name}.py` on {when}, commit {commit()}; {_machine()}."]
    header += ["", how]
    if quick:
        header += [
            "",
            "**A `--quick` run: a smoke check that the benchmark works, not a measurement.**",
        ]
    text = "\n".join([*header, "", body.strip(), ""])
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.md"
    path.write_text(text)
    print(f"\n{body.strip()}\n\nwritten to {os.path.relpath(path, ROOT)}", flush=True)
    return path
