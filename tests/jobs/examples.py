"""Jobs the tests enqueue, and what they report back to them (in this process)."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta

from service.jobs import job
from tests.db.models import Widget

started: Counter[str] = Counter()
"""How often each job body started, by the name it was given."""
release = asyncio.Event()
"""What ``waits_for_release`` waits for."""
failing: set[str] = set()
"""Names for which ``flaky`` fails."""


async def _note_failure(name: str, *_: object, error: Exception) -> None:
    await Widget(name=f"{name}: {error}").save()


@job(on_failure=_note_failure, attempts=1)
async def add_widget(name: str, fail: bool = False, delay: float = 0.0) -> None:
    started[name] += 1
    await asyncio.sleep(delay)
    await Widget(name=name).save()
    if fail:
        raise RuntimeError("failed after writing")


@job(on_failure=_note_failure, attempts=3)
async def always_fails(name: str) -> None:
    started[name] += 1
    await Widget(name=f"{name} {started[name]}").save()  # rolled back with each attempt
    raise RuntimeError(f"attempt {started[name]} failed")


@job(attempts=2)
async def flaky(name: str) -> None:
    started[name] += 1
    if name in failing:
        raise RuntimeError(f"{name} is failing")
    await Widget(name=name).save()


@job(attempts=5, backoff=timedelta(hours=1))
async def fails_then_waits(name: str) -> None:
    started[name] += 1
    raise RuntimeError("try again in an hour")


@job()
async def waits_for_release(name: str) -> None:
    started[name] += 1
    await release.wait()
    await Widget(name=name).save()
