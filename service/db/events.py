"""What the layer does, published as typed events: for metrics, traces and logs.

    from service.db import events

    @events.unit_ended.connect
    def count(event: events.UnitOfWorkEnded) -> None:
        print(event.entry, event.outcome, event.commit_seconds)

See ``service.db._events`` for what each signal carries and when it is sent.
"""

from service.db._events import (
    Entry,
    Outcome,
    PoolCheckin,
    PoolCheckout,
    ReplicaPolled,
    ReplicaRead,
    Signal,
    UnitOfWorkBegan,
    UnitOfWorkEnded,
    WriterAdmitted,
    WriterQueued,
    entry_point,
    pool_checkin,
    pool_checkout,
    replica_polled,
    replica_read,
    running_as,
    unit_began,
    unit_ended,
    writer_admitted,
    writer_queued,
)

__all__ = [
    "Entry",
    "Outcome",
    "PoolCheckin",
    "PoolCheckout",
    "ReplicaPolled",
    "ReplicaRead",
    "Signal",
    "UnitOfWorkBegan",
    "UnitOfWorkEnded",
    "WriterAdmitted",
    "WriterQueued",
    "entry_point",
    "pool_checkin",
    "pool_checkout",
    "replica_polled",
    "replica_read",
    "running_as",
    "unit_began",
    "unit_ended",
    "writer_admitted",
    "writer_queued",
]
