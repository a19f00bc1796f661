"""Where prometheus-client's multiprocess mode keeps the figures of a Hypercorn parent's workers.

``PROMETHEUS_MULTIPROC_DIR`` if set; otherwise one directory per Hypercorn parent
process, in the temporary directory, and those of parents that are gone removed.
``None``: one process, figures in memory.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["multiprocess_directory"]


def multiprocess_directory() -> Path | None:
    configured = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if configured:
        return Path(configured)
    parent = multiprocessing.parent_process()
    if parent is None or parent.pid is None:
        return None  # one process: in memory
    base = Path(tempfile.gettempdir()) / "service-metrics"
    directory = base / f"{parent.pid}-{_started(parent.pid)}"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    for other in base.iterdir():
        if other != directory and not _alive(other.name):
            shutil.rmtree(other, ignore_errors=True)  # a parent that is gone
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    return directory


def _started(pid: int) -> str:
    """When process ``pid`` started (clock ticks since boot), to tell a reused pid apart."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return "0"


def _alive(name: str) -> bool:
    pid, _, started = name.partition("-")
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return _started(int(pid)) == started
