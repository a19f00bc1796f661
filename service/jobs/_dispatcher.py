"""The dispatcher: what delivers the outbox's jobs in a serving process (and a worker's).

A dispatcher holds at most ``4 * concurrency`` deliveries, running or waiting for
one of its ``concurrency`` slots, so that it never renews more leases than it
will soon run.

- **Kicked jobs start at once.** A job enqueued in this process while it has room
  is written ``queued`` for it, reserved until ``due_at`` (one lease after the
  enqueue): nobody else takes it before then, so the dispatcher starts it with no
  write of its own. Without room, the job is written due at once, for any
  process's sweeper to take (this one is told to look).
- **Leases are renewed** (``renewals``): once a third of a held delivery's lease
  has passed (waiting for a slot, or running), it is renewed, in one statement
  for all of them. One that turns out to be taken over is cancelled, which rolls
  it back; so is one whose renewal cannot be written before its lease runs out.
- **The sweeper** (``sweeper``, about once a second) schedules the periodic jobs
  that have no instance; then, with room for at least half of what it may hold,
  it takes jobs whose ``due_at`` has passed, in one statement: never delivered
  (their process died after the commit), retries whose backoff is over, leases
  that ran out. While due jobs are left over, it looks again once room is free.
  An idle sweeper only reads.

With the Celery backend no job runs here: the sweeper hands what it takes to the
broker (``relay``), as the kick does.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from service.db import Bind, events, unit_of_work
from service.jobs import _admin, _outbox
from service.jobs._deliver import Outcome, deliver
from service.jobs._outbox import Delivery
from service.jobs._registry import registry

__all__ = ["Dispatcher", "Relay", "Spawn", "new_owner", "spawn_task"]

logger = logging.getLogger("service.jobs")

Spawn = Callable[..., None]
"""Starts ``function(*args)`` as a task the app awaits at shutdown (``add_background_task``)."""
Relay = Callable[[list[Delivery]], Awaitable[None]]
"""Hands queued deliveries to the broker."""


class Stopping(Protocol):
    """Set when the process begins to stop (``asyncio.Event``, Quart's ``shutdown_event``)."""

    def is_set(self) -> bool: ...

    async def wait(self) -> Any: ...


_RENEW_AT = 2 / 3
"""A held delivery is renewed once less than this fraction of its lease is left..."""
_START_BEFORE = 1 / 2
"""...a waiting one is started only while at least this fraction is left..."""
_GIVE_UP_AT = 1 / 4
"""...and one whose renewal failed is cancelled when less than this is left."""
_RELAY_BATCH = 100
_HELD_PER_SLOT = 4
"""Deliveries a dispatcher holds (waiting or running) per slot, at most."""


def new_owner() -> str:
    """A dispatcher's name in the ``owner`` column: host, pid, and a nonce."""
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{secrets.token_hex(3)}"


@dataclass(eq=False)
class _Held:
    delivery: Delivery
    deadline: datetime
    started: bool = False
    task: asyncio.Task[Any] | None = None
    lost: bool = False


@dataclass(eq=False)
class Dispatcher:
    """Delivers jobs for one process: ``kick()`` hands it new ones; ``renewals()`` and
    ``sweeper()`` are its two loops, run as tasks of the app until ``stopping`` is set."""

    bind: Bind | None
    spawn: Spawn
    stopping: Stopping
    lease: timedelta
    sweep_interval: float = 1.0
    concurrency: int = 4
    relay: Relay | None = None
    owner: str = field(default_factory=new_owner)
    on_outcome: Callable[[Outcome], None] | None = None
    _held: dict[tuple[int, int], _Held] = field(default_factory=dict)
    _waiting: deque[_Held] = field(default_factory=deque)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _freed: asyncio.Event = field(default_factory=asyncio.Event)
    _sweep_now: asyncio.Event = field(default_factory=asyncio.Event)

    def room(self) -> int:
        """How many more jobs may be reserved for this process: ``4 * concurrency`` held at
        most, so that it never renews more leases than it will soon run."""
        return _HELD_PER_SLOT * self.concurrency - len(self._held)

    def kick(self, delivery: Delivery) -> None:
        """Deliver ``delivery``, reserved for this process, as soon as a slot is free."""
        held = _Held(delivery, delivery.deadline)
        self._held[delivery.token] = held
        self._waiting.append(held)
        self._start_waiting()

    def sweep_soon(self) -> None:
        """Jobs were enqueued for any process to take (this one had no room): look now."""
        self._sweep_now.set()

    async def renewals(self, *, until_idle: bool = False) -> None:
        """Renew the leases of held deliveries; return once stopping (or, ``until_idle``, at
        any time) and none is held."""
        interval = self.lease.total_seconds() / 6
        events.entry_point.set("dispatcher")  # this task's units of work (deliveries: "job")
        while True:
            if self.stopping.is_set():
                self._forget_waiting()  # never started: release() hands their rows back
            if (until_idle or self.stopping.is_set()) and not self._held:
                return
            if self._held:
                await self._renew()
            self._start_waiting()
            self._changed.clear()
            waits = [self._changed.wait()]
            if not self.stopping.is_set():  # once set, it would end every wait at once
                waits.append(self.stopping.wait())
            await _first(*waits, seconds=interval)

    async def sweeper(self) -> None:
        """About every ``sweep_interval``: periodic jobs, then due ones; until stopping. While
        due jobs are left over, again once room is free."""
        periodic_at = 0.0
        events.entry_point.set("dispatcher")  # this task's units of work (deliveries: "job")
        while not self.stopping.is_set():
            self._freed.clear()
            self._sweep_now.clear()
            more = False
            try:
                if time.monotonic() >= periodic_at:
                    periodic_at = time.monotonic() + self.sweep_interval
                    await self._schedule_periodic()
                more = await (self._relay_due() if self.relay is not None else self._take_due())
            except Exception as error:
                logger.warning("the jobs sweeper failed: %r", error)
            waits = [self.stopping.wait(), self._sweep_now.wait()]
            if more:
                waits.append(self._freed.wait())
            await _first(*waits, seconds=self.sweep_interval)

    async def release(self) -> None:
        """Once every delivery has ended: hand back what this process still holds, due now."""
        try:
            with events.running_as("dispatcher"):
                released = await unit_of_work(bind=self.bind)(_outbox.release)(self.owner)
        except Exception:
            logger.warning("could not hand back this process's jobs", exc_info=True)
            return
        if released:
            logger.info("handed back %d jobs cut off by the shutdown", released)

    def _running(self) -> int:
        return sum(1 for held in self._held.values() if held.started)

    def _start_waiting(self) -> None:
        if self.stopping.is_set():
            return
        running = self._running()
        latest = _outbox.utcnow() + self.lease * _START_BEFORE
        while self._waiting and running < self.concurrency:
            held = self._waiting[0]
            if held.lost:
                self._waiting.popleft()
                continue
            if held.deadline < latest:
                break  # too little of its reservation left: its renewal comes first
            self._waiting.popleft()
            self._start(held)
            running += 1

    def _start(self, held: _Held) -> None:
        held.started = True
        self.spawn(self._deliver, held)

    def _forget_waiting(self) -> None:
        while self._waiting:
            held = self._waiting.popleft()
            self._held.pop(held.delivery.token, None)

    async def _deliver(self, held: _Held) -> None:
        held.task = asyncio.current_task()
        try:
            if not held.lost:
                outcome = await deliver(held.delivery, bind=self.bind)
                if self.on_outcome is not None:
                    self.on_outcome(outcome)
        except asyncio.CancelledError:
            if not held.lost:
                raise  # the app is stopping: release() hands the row back
        finally:
            self._held.pop(held.delivery.token, None)
            self._changed.set()
            self._freed.set()
            self._start_waiting()

    async def _renew(self) -> None:
        renew_before = _outbox.utcnow() + self.lease * _RENEW_AT
        ageing = [held for held in self._held.values() if held.deadline < renew_before]
        if not ageing:
            return
        try:
            async with asyncio.timeout(self.lease.total_seconds() * _GIVE_UP_AT):
                renewed, deadline = await unit_of_work(bind=self.bind)(_outbox.renew)(
                    [held.delivery.token for held in ageing], owner=self.owner, lease=self.lease
                )
        except Exception as error:
            logger.warning("could not renew the leases of %d jobs: %r", len(ageing), error)
            give_up = _outbox.utcnow() + self.lease * _GIVE_UP_AT
            for held in ageing:
                if held.deadline < give_up:
                    self._lose(held, "its lease could not be renewed in time")
            return
        for held in ageing:
            if held.delivery.token in renewed:
                held.deadline = deadline
            else:
                self._lose(held, "another delivery has taken it over")

    def _lose(self, held: _Held, why: str) -> None:
        logger.warning("job %s (%s): %s; stopping it", held.delivery.id, held.delivery.name, why)
        held.lost = True
        if held.task is not None:
            held.task.cancel()
        elif not held.started:
            self._held.pop(held.delivery.token, None)

    async def _schedule_periodic(self) -> None:
        names = sorted(name for name, job in registry.items() if job.every is not None)
        if not names:
            return
        read = unit_of_work(bind=self.bind, readonly=True)(_admin.missing_periodic)
        if await read(names):
            await unit_of_work(bind=self.bind)(_admin.ensure_periodic)(names, _outbox.utcnow())

    async def _take_due(self) -> bool:
        """Take due jobs while there is room for half of what this process may hold (so that
        one statement takes many); returns whether more may be due."""
        room = self.room()
        if room < _HELD_PER_SLOT * self.concurrency // 2:
            return True
        if not await unit_of_work(bind=self.bind, readonly=True)(_outbox.due)():
            return False
        taken = await unit_of_work(bind=self.bind)(_outbox.take)(
            limit=room, owner=self.owner, lease=self.lease
        )
        for delivery in taken:
            if self.stopping.is_set():
                continue  # taken as the app began stopping: release() hands it back
            held = _Held(delivery, delivery.deadline)
            self._held[delivery.token] = held
            self._waiting.append(held)
        self._start_waiting()
        if taken:
            self._changed.set()
        return len(taken) == room

    async def _relay_due(self) -> bool:
        assert self.relay is not None
        while await unit_of_work(bind=self.bind, readonly=True)(_outbox.due)():
            taken = await unit_of_work(bind=self.bind)(_outbox.relay)(
                limit=_RELAY_BATCH, lease=self.lease
            )
            await self.relay(taken)
            if len(taken) < _RELAY_BATCH or self.stopping.is_set():
                break
        return False


async def _first(*waits: Coroutine[Any, Any, Any], seconds: float) -> None:
    """Wait until the first of ``waits`` is done, or ``seconds``."""
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


def spawn_task(tasks: set[asyncio.Task[Any]]) -> Spawn:
    """A ``Spawn`` outside a Quart app: plain tasks, kept in ``tasks`` until they end."""

    def spawn(function: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        task = asyncio.ensure_future(function(*args))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    return spawn
