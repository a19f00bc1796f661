"""Rate limits, on the ``limits`` library: a sliding-window counter per limit and key.

Three limits, each configured in ``limits`` notation (``30/minute``):

- ``failed_auth``: requests with a missing, wrong or expired token, per client address;
- ``registration``: ``POST /users``, per client address;
- ``user``: requests per user, whatever token each uses (minting tokens gains nothing).

The counters live in this process (``RATE_LIMIT_STORAGE_URL=memory://``, the
default) or in Redis (``redis://host:port/db``), where every worker and host
using that Redis shares them. ``RATE_LIMIT_ENABLED=false`` turns them all off.
A refused request is a 429 ``rate_limited`` with ``Retry-After``, and ``refused`` is sent
with the limit's name (``service.metrics`` counts them).

A limit that guards expensive work is asked before it: ``reserving`` counts the
attempts of a key still under way in this process as used, so that many
concurrent attempts cannot all pass the test before the first failure is counted.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal

from blinker import Signal
from limits import RateLimitItem, parse
from limits.aio.storage import Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.storage import storage_from_string
from quart import Quart, current_app

from service.errors import ApiError

__all__ = ["Limit", "RateLimits", "check", "hit", "refused", "reserving"]

logger = logging.getLogger(__name__)

Limit = Literal["failed_auth", "registration", "user"]
_EXTENSION = "service.ratelimit"
refused = Signal("a request was refused by a rate limit; sent with the limit's name")
_SETTINGS: dict[Limit, str] = {
    "failed_auth": "RATE_LIMIT_FAILED_AUTH",
    "registration": "RATE_LIMIT_REGISTRATIONS",
    "user": "RATE_LIMIT_PER_USER",
}


@dataclass
class _State:
    enabled: bool
    url: str
    items: dict[Limit, RateLimitItem] = field(default_factory=dict)
    storage: Storage | None = None
    limiter: SlidingWindowCounterRateLimiter | None = None
    under_way: dict[tuple[Limit, str], int] = field(default_factory=dict)
    """Attempts reserved by ``reserving`` and not yet over, per limit and key."""


class RateLimits:
    """The app's rate limits: ``RateLimits(app)``; storage opened when serving starts."""

    def __init__(self, app: Quart | None = None) -> None:
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Quart) -> None:
        if _EXTENSION in app.extensions:
            raise RuntimeError("RateLimits is already registered on this app; call init_app once.")
        config = app.config
        state = _State(
            enabled=bool(config["RATE_LIMIT_ENABLED"]),
            url=config["RATE_LIMIT_STORAGE_URL"],
            items={name: parse(config[key]) for name, key in _SETTINGS.items()},
        )
        app.extensions[_EXTENSION] = state

        async def start() -> None:
            if state.enabled:
                state.storage = _storage(state.url)
                state.limiter = SlidingWindowCounterRateLimiter(state.storage)

        async def stop() -> None:
            storage, state.storage, state.limiter = state.storage, None, None
            if storage is not None:
                await _close(storage)

        app.before_serving(start)
        app.after_serving(stop)


def _storage(url: str) -> Storage:
    options: dict[str, str] = {}
    if url.startswith(("redis://", "rediss://")):
        options["implementation"] = "redispy"  # redis-py (here for Celery), not coredis
    storage = storage_from_string(url if url.startswith("async+") else f"async+{url}", **options)
    if not isinstance(storage, Storage):
        raise ValueError(f"RATE_LIMIT_STORAGE_URL={url!r} is not a storage limits can share")
    return storage


async def _close(storage: Storage) -> None:
    client = getattr(getattr(storage, "bridge", None), "storage", None)
    close = getattr(client, "aclose", None)
    if close is not None:
        await close()
    timer = getattr(storage, "timer", None)  # the memory storage's expiry task
    if timer is not None and not timer.done():
        timer.cancel()


def _state() -> _State:
    state: _State = current_app.extensions[_EXTENSION]
    return state


async def hit(limit: Limit, key: str) -> None:
    """Count one request against ``limit`` for ``key``; 429 if it is over the limit."""
    await _ask(limit, key, count=True)


async def check(limit: Limit, key: str) -> None:
    """429 if ``key`` has already used up ``limit``, without counting this request."""
    await _ask(limit, key, count=False)


@asynccontextmanager
async def reserving(limit: Limit, key: str) -> AsyncIterator[None]:
    """429 if ``key`` has used up ``limit``, counting as used its attempts under way in this
    process, this one included; the block is an attempt under way until it ends.

    For a limit counted on failure (``hit`` once the attempt failed) that guards work:
    without it, N concurrent attempts all pass ``check`` before the first failure counts.
    """
    state = _state()
    if state.limiter is None:
        yield
        return
    reserved = (limit, key)
    # Reserved before the first await, so that concurrent attempts see each other.
    under_way = state.under_way[reserved] = state.under_way.get(reserved, 0) + 1
    try:
        await _ask(limit, key, count=False, cost=under_way)
        yield
    finally:
        left = state.under_way[reserved] - 1
        if left:
            state.under_way[reserved] = left
        else:
            del state.under_way[reserved]


async def _ask(limit: Limit, key: str, *, count: bool, cost: int = 1) -> None:
    state = _state()
    limiter = state.limiter
    if limiter is None:  # disabled, or not serving
        return
    item = state.items[limit]
    try:
        if count:
            allowed = await limiter.hit(item, limit, key)
        else:
            allowed = await limiter.test(item, limit, key, cost=cost)
        if allowed:
            return
        stats = await limiter.get_window_stats(item, limit, key)
    except Exception:
        # An unreachable Redis must not take the API down with it: the limit is lifted.
        logger.warning("rate limit storage failed; request let through", exc_info=True)
        return
    retry_after = max(1, math.ceil(stats.reset_time - time.time()))
    refused.send(limit)
    raise ApiError(
        429,
        "rate_limited",
        f"Too many requests; retry in {retry_after} s.",
        headers={"Retry-After": str(retry_after)},
    )
