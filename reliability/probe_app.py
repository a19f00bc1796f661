"""The service's app, plus one route that reports what the leak test needs to see.

Served by Hypercorn as ``reliability.probe_app:app``. The route touches no
database, so asking does not change the answer.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc

import psutil

from service.app import create_app, db
from service.db import session

app = create_app()
_libc = ctypes.CDLL(ctypes.util.find_library("c"))


@app.get("/_reliability/state")
async def state() -> dict[str, int]:
    """Scoped sessions alive, pooled connections checked out, resident memory, tasks.

    ``rss`` is read as is, then again (``rss_held``) once glibc has returned the
    free pages it keeps to the system (``malloc_trim``): what the process still
    holds, which is what a leak would grow.
    """
    gc.collect()
    rss = psutil.Process().memory_info().rss
    _libc.malloc_trim(0)
    return {
        "sessions": len(session.registry.registry),
        "checked_out": db.engine.sync_engine.pool.checkedout(),  # type: ignore[attr-defined]
        "rss": rss,
        "rss_held": psutil.Process().memory_info().rss,
        "tasks": len(asyncio.all_tasks()),
    }
