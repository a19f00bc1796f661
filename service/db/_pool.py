"""The layer's engines' pool: SQLAlchemy's, plus what it does published as events.

SQLAlchemy's pool events say when a connection is checked out, but not how long
the checkout waited for one, nor that it timed out: this pool times its
``connect()`` and sends ``pool_checkout`` (``_events``) with the wait, or the
timeout, and the pool's figures; and ``pool_checkin`` when a connection is back.
Without listeners it is SQLAlchemy's pool, plus two truth tests.
"""

from __future__ import annotations

import time

from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry, PoolProxiedConnection

from service.db import _events
from service.db._events import PoolCheckin, PoolCheckout

__all__ = ["MeasuredPool"]


class MeasuredPool(AsyncAdaptedQueuePool):
    """``AsyncAdaptedQueuePool`` that sends ``pool_checkout`` and ``pool_checkin``."""

    def connect(self) -> PoolProxiedConnection:
        if not _events.pool_checkout:
            return super().connect()
        started = time.perf_counter()
        try:
            connection = super().connect()
        except PoolTimeoutError as error:
            _events.seen(error)  # the unit of work's outcome: an outage
            self._checked_out(time.perf_counter() - started, timed_out=True)
            raise
        self._checked_out(time.perf_counter() - started, timed_out=False)
        return connection

    def _checked_out(self, waited: float, *, timed_out: bool) -> None:
        event = PoolCheckout(self, waited, timed_out, self.checkedout(), max(self.overflow(), 0))
        _events.pool_checkout.send(event)

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        super()._do_return_conn(record)
        if _events.pool_checkin:
            checked_in = PoolCheckin(self, self.checkedout(), max(self.overflow(), 0))
            _events.pool_checkin.send(checked_in)
