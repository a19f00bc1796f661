"""Jobs over Celery: the broker is the transport, the outbox is the truth.

The sending side hands ``(job id, attempt)`` pairs to the broker as messages of
one task, ``DELIVER_TASK``; the job itself stays in the outbox. A send that fails
(the broker is down) is only logged: the row stays queued, and once its
reservation has passed a serving process's sweeper takes it again and sends it
anew. The worker side (``run_delivered``, called by ``service.worker``) claims
the row before running it, renews its lease while it runs, and acknowledges it
in the job's own unit of work; a message for a delivery that is no longer queued
(sent twice, taken over, finished) is dropped.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from service.db import Bind, events, unit_of_work
from service.jobs import _outbox
from service.jobs._deliver import Outcome
from service.jobs._dispatcher import Dispatcher, new_owner, spawn_task
from service.jobs._outbox import Delivery

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["DELIVER_TASK", "QUEUE", "CelerySender", "run_delivered", "sender_for"]

QUEUE = "service"
"""The queue jobs go to without ``CELERY_QUEUE``."""

DELIVER_TASK = "service.jobs.deliver"
"""The one Celery task: its arguments are a job's id and the number of its delivery."""

logger = logging.getLogger("service.jobs")

# Sending is given up quickly when the broker is down: the outbox keeps the job.
_PUBLISH_RETRY_POLICY = {
    "max_retries": 2,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.2,
}


class CelerySender:
    """Sends deliveries to the broker, one batch at a time, from a thread of its own."""

    def __init__(self, broker_url: str, queue: str) -> None:
        self.broker_url = broker_url
        self.queue = queue
        # Not the loop's default executor: a broker that hangs must not starve DNS
        # lookups and everything else that runs there.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jobs-broker")
        self._celery: Celery | None = None

    async def send(self, deliveries: list[Delivery]) -> None:
        """Hand ``deliveries`` to the broker; a failure is logged, the outbox keeps them."""
        if not deliveries:
            return
        tokens = [delivery.token for delivery in deliveries]
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._send, tokens)
        except Exception as error:
            logger.warning(
                "could not send %d jobs to the broker (%r); they are sent again once their "
                "reservation has passed",
                len(tokens),
                error,
            )

    def _send(self, tokens: list[tuple[int, int]]) -> None:
        celery = self._app()
        with celery.producer_or_acquire() as producer:
            for job_id, attempt in tokens:
                celery.send_task(
                    DELIVER_TASK,
                    args=[job_id, attempt],
                    queue=self.queue,
                    producer=producer,
                    retry_policy=_PUBLISH_RETRY_POLICY,
                )

    def _app(self) -> Celery:
        if self._celery is None:
            from celery import Celery  # a slow import: only where jobs go to a broker

            celery = Celery("service.jobs", broker=self.broker_url, set_as_current=False)
            celery.conf.update(broker_connection_timeout=2, broker_connection_retry=False)
            self._celery = celery
        return self._celery


@functools.cache
def sender_for(broker_url: str, queue: str) -> CelerySender:
    """The process's sender for ``broker_url`` and ``queue``."""
    return CelerySender(broker_url, queue)


async def run_delivered(
    job_id: int, attempt: int, *, bind: Bind | None, lease: timedelta
) -> Outcome | None:
    """Claim and run the delivery a message names, renewing its lease while it runs.

    ``None`` if the message is stale: the delivery is no longer queued.
    """
    with events.running_as("dispatcher"):
        return await _run_delivered(job_id, attempt, bind=bind, lease=lease)


async def _run_delivered(
    job_id: int, attempt: int, *, bind: Bind | None, lease: timedelta
) -> Outcome | None:
    owner = new_owner()
    delivery = None
    # A copy of a message already delivered is common (sent again while the first waited
    # in a long queue): found out by a read, it costs no write (SQLite's write lock).
    if await unit_of_work(bind=bind, readonly=True)(_outbox.queued)(job_id, attempt):
        delivery = await unit_of_work(bind=bind)(_outbox.claim)(
            job_id, attempt, owner=owner, lease=lease
        )
    if delivery is None:
        logger.info("job %s: delivery %s is no longer queued; message dropped", job_id, attempt)
        return None
    outcomes: list[Outcome] = []
    tasks: set[asyncio.Task[Any]] = set()
    dispatcher = Dispatcher(
        bind=bind,
        spawn=spawn_task(tasks),
        stopping=asyncio.Event(),
        lease=lease,
        concurrency=1,
        owner=owner,
        on_outcome=outcomes.append,
    )
    dispatcher.kick(delivery)
    await dispatcher.renewals(until_idle=True)
    await asyncio.gather(*tasks)
    return outcomes[0] if outcomes else "lost"
