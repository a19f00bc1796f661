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


def multiprocess_directory(owner: int | None = None) -> Path | None:
    """The directory this process's figures go to, or ``None`` to keep them in memory.

    ``owner``: the pid of the process whose children share it (the Celery worker's main
    process); by default this process's parent, if it has one (a Hypercorn worker).
    """
    configured = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if configured:
        return Path(configured)
    if owner is None:
        parent = multiprocessing.parent_process()
        if parent is None or parent.pid is None:
            return None  # one process: in memory
        owner = parent.pid
    base = Path(tempfile.gettempdir()) / "service-metrics"
    directory = base / f"{owner}-{_started(owner)}"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    for other in base.iterdir():
        if other != directory and not _alive(other.name):
            shutil.rmtree(other, ignore_errors=True)  # an owner that is gone
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
