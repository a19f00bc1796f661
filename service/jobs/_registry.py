"""The registry of jobs: what ``@job()`` declares, by name, for any process to run."""

from __future__ import annotations

import inspect
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

__all__ = ["Body", "FailureHandler", "Job", "job", "job_name", "registry"]

Body = Callable[..., Awaitable[None]]
FailureHandler = Callable[..., Awaitable[None]]
B = TypeVar("B", bound=Body)

MAX_BACKOFF = timedelta(hours=1)


@dataclass(frozen=True)
class Job:
    """A registered job: its body and how it is retried."""

    name: str
    body: Body
    on_failure: FailureHandler | None = None
    """Called with the job's arguments and ``error=`` when it ends dead, in a unit of work of
    its own."""
    retries: int = 3
    """Re-runs of the body within one attempt, on a serialization failure or a deadlock."""
    attempts: int = 10
    """Deliveries before the job is dead: a failed attempt, or one whose process was lost."""
    backoff: timedelta = timedelta(seconds=1)
    """The wait after the first failed attempt; it doubles after each one (up to an hour)."""
    every: timedelta | None = None
    """A periodic job: run once per ``every``, one instance across all processes."""

    def retry_delay(self, attempt: int) -> timedelta:
        """How long to wait after failed attempt number ``attempt``: exponential, jittered."""
        delay: timedelta = self.backoff * 2 ** (attempt - 1) * random.uniform(0.75, 1.25)
        return min(delay, MAX_BACKOFF)


registry: dict[str, Job] = {}
"""Every job, by name (``module.function``): what a dispatcher or a worker can run."""


def job_name(body: Body) -> str:
    return f"{body.__module__}.{body.__qualname__}"


def job(
    *,
    on_failure: FailureHandler | None = None,
    retries: int = 3,
    attempts: int = 10,
    backoff: timedelta = timedelta(seconds=1),
    every: timedelta | None = None,
) -> Callable[[B], B]:
    """Register an async function as a job. Its arguments must be JSON-serializable.

    A failed attempt is tried again after ``backoff``, doubling each time, until
    ``attempts`` deliveries have failed; the job is then dead, and ``on_failure``
    runs. With ``every``, the job (which then takes no arguments) runs once per
    period, and at most one instance of it is ever pending.
    """
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    if every is not None and every <= timedelta(0):
        raise ValueError("every must be a positive period")

    def register(body: B) -> B:
        name = job_name(body)
        if every is not None:
            required = [
                parameter
                for parameter in inspect.signature(body).parameters.values()
                if parameter.default is inspect.Parameter.empty
                and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
            ]
            if required:
                raise TypeError(f"{name}: a periodic job (every=...) takes no arguments")
        registry[name] = Job(name, body, on_failure, retries, attempts, backoff, every)
        return body

    return register
