"""Prometheus metrics: the layer's and the jobs' events, requests and rate limits, on a port of
their own.

Off unless ``METRICS_PORT`` is set. Then every request, unit of work, pooled
connection, SQLite writer, job delivery, rate-limit refusal and replica read is counted, and
``GET /metrics`` answers on that port only, never on the API's: ``service serve``
binds it to 127.0.0.1 (``--metrics-host`` to change it). Run under Hypercorn
directly, bind it yourself (``hypercorn -b 0.0.0.0:8000 -b 127.0.0.1:9464``), on an
address only the scraper reaches.

Several worker processes: prometheus-client's multiprocess mode. Each Hypercorn
worker writes its figures to files in one directory, and whichever worker answers
a scrape sums them. The directory is ``PROMETHEUS_MULTIPROC_DIR`` if set (then
empty it before each start, as prometheus-client says); otherwise the service
keeps one per Hypercorn parent process, in the temporary directory, and removes
those of parents that are gone. A process that is not a worker (tests, ``hypercorn``
without workers) keeps its figures in memory. The families are listed in
docs/metrics.md.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from quart import Quart, Response, request, request_finished, request_started

from service import jobs, ratelimit
from service.db import events as db_events
from service.jobs import OutboxStats
from service.metrics_files import multiprocess_directory

__all__ = ["Metrics", "init_app", "metrics"]

logger = logging.getLogger(__name__)

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_SLOW = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_request_started: ContextVar[float | None] = ContextVar("service_metrics_started", default=None)
ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class Metrics:
    """The process's families, and the listeners that move them."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "service_http_requests",
            "HTTP requests answered, by method, route template and final status.",
            ["method", "route", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "service_http_request_duration_seconds",
            "Time from a request's start to its final response, by method and route template.",
            ["method", "route"],
            buckets=_FAST,
            registry=r,
        )
        self.units = Counter(
            "service_db_units_of_work",
            "Units of work ended, by entry point and outcome.",
            ["entry", "outcome"],
            registry=r,
        )
        self.commit_seconds = Histogram(
            "service_db_commit_duration_seconds",
            "Time to flush, COMMIT and return the connection, by entry point.",
            ["entry"],
            buckets=_FAST,
            registry=r,
        )
        self.checked_out = Gauge(
            "service_db_pool_checked_out",
            "Pooled connections in use.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.overflow = Gauge(
            "service_db_pool_overflow",
            "Connections open beyond the pools' size.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.pool_wait = Histogram(
            "service_db_pool_wait_seconds",
            "Time to get a connection from the pool (timeouts included).",
            buckets=_FAST,
            registry=r,
        )
        self.pool_timeouts = Counter(
            "service_db_pool_timeouts",
            "Checkouts that gave up waiting for a pooled connection (503s).",
            registry=r,
        )
        self.writers_waiting = Gauge(
            "service_db_sqlite_writers_waiting",
            "SQLite writers queued at the writer gates.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.writer_wait = Histogram(
            "service_db_sqlite_writer_wait_seconds",
            "Time a SQLite writer waited at its process's writer gate.",
            buckets=_FAST,
            registry=r,
        )
        self.enqueued = Counter(
            "service_jobs_enqueued", "Jobs enqueued, by job.", ["job"], registry=r
        )
        self.deliveries = Counter(
            "service_jobs_deliveries",
            "Deliveries of jobs ended, by job and outcome (retry: failed, to be retried).",
            ["job", "outcome"],
            registry=r,
        )
        self.delivery_seconds = Histogram(
            "service_jobs_delivery_duration_seconds",
            "Time a delivery took, by job.",
            ["job"],
            buckets=_SLOW,
            registry=r,
        )
        self.refusals = Counter(
            "service_rate_limit_refusals",
            "Requests refused by a rate limit, by limit.",
            ["limit"],
            registry=r,
        )
        self.replica_reads = Counter(
            "service_db_replica_reads",
            "Read-only units that read, by the server they read from: primary or a replica "
            "(a unit moved to the primary after its replica failed counts on both).",
            ["server"],
            registry=r,
        )
        self.replica_fallbacks = Counter(
            "service_db_replica_fallbacks",
            "Read-only units that read from the primary with replicas configured, by reason.",
            ["reason"],
            registry=r,
        )
        self.replica_lag = Gauge(
            "service_db_replica_lag_seconds",
            "How far behind the primary each replica was at its last poll (the largest of the "
            "workers' views).",
            ["replica"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.replica_in_rotation = Gauge(
            "service_db_replica_in_rotation",
            "1 if every worker's poller has the replica in its rotation, else 0.",
            ["replica"],
            registry=r,
            multiprocess_mode="livemin",
        )
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._unit_children: dict[tuple[str, str], Any] = {}

    # The listeners. Labelled children are cached: ``labels()`` costs more than the count.

    def unit_ended(self, event: db_events.UnitOfWorkEnded) -> None:
        key = (event.entry, event.outcome)
        counter = self._unit_children.get(key)
        if counter is None:
            counter = self._unit_children[key] = self.units.labels(*key)
        counter.inc()
        if event.commit_seconds is not None:
            self.commit_seconds.labels(event.entry).observe(event.commit_seconds)

    def pool_checkout(self, event: db_events.PoolCheckout) -> None:
        self.pool_wait.observe(event.waited)
        if event.timed_out:
            self.pool_timeouts.inc()
        self.checked_out.set(event.checked_out)
        self.overflow.set(event.overflow)

    def pool_checkin(self, event: db_events.PoolCheckin) -> None:
        self.checked_out.set(event.checked_out)
        self.overflow.set(event.overflow)

    def writer_queued(self, event: db_events.WriterQueued) -> None:
        self.writers_waiting.set(event.waiting)

    def writer_admitted(self, event: db_events.WriterAdmitted) -> None:
        self.writer_wait.observe(event.waited)

    def replica_read(self, event: db_events.ReplicaRead) -> None:
        self.replica_reads.labels(event.server).inc()
        if event.fallback is not None:
            self.replica_fallbacks.labels(event.fallback).inc()

    def replica_polled(self, event: db_events.ReplicaPolled) -> None:
        self.replica_in_rotation.labels(event.replica).set(int(event.in_rotation))
        if event.lag_seconds is not None:
            self.replica_lag.labels(event.replica).set(event.lag_seconds)

    def job_enqueued(self, event: jobs.events.JobEnqueued) -> None:
        self.enqueued.labels(event.name).inc()

    def job_ended(self, event: jobs.events.JobEnded) -> None:
        self.deliveries.labels(event.name, event.outcome).inc()
        self.delivery_seconds.labels(event.name).observe(event.seconds)

    def refused(self, limit: str) -> None:
        self.refusals.labels(limit).inc()

    def request_finished(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        children = self._request_children.get(key)
        if children is None:
            children = self._request_children[key] = (
                self.requests.labels(method, route, str(status)),
                self.request_seconds.labels(method, route),
            )
        children[0].inc()
        children[1].observe(seconds)

    def connect(self) -> None:
        """Listen to the layer's, the jobs' and the rate limits' events."""
        db_events.unit_ended.connect(self.unit_ended)
        db_events.pool_checkout.connect(self.pool_checkout)
        db_events.pool_checkin.connect(self.pool_checkin)
        db_events.writer_queued.connect(self.writer_queued)
        db_events.writer_admitted.connect(self.writer_admitted)
        db_events.replica_read.connect(self.replica_read)
        db_events.replica_polled.connect(self.replica_polled)
        jobs.events.job_enqueued.connect(self.job_enqueued)
        jobs.events.job_ended.connect(self.job_ended)
        ratelimit.refused.connect(self.refused, weak=False)

    def disconnect(self) -> None:
        db_events.unit_ended.disconnect(self.unit_ended)
        db_events.pool_checkout.disconnect(self.pool_checkout)
        db_events.pool_checkin.disconnect(self.pool_checkin)
        db_events.writer_queued.disconnect(self.writer_queued)
        db_events.writer_admitted.disconnect(self.writer_admitted)
        db_events.replica_read.disconnect(self.replica_read)
        db_events.replica_polled.disconnect(self.replica_polled)
        jobs.events.job_enqueued.disconnect(self.job_enqueued)
        jobs.events.job_ended.disconnect(self.job_ended)
        ratelimit.refused.disconnect(self.refused)

    def exposition(self, outbox: OutboxStats | None) -> bytes:
        """The text a scrape gets: this process's figures, or every worker's, and the outbox's."""
        if self.directory is None:
            registry = self.registry
        else:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, str(self.directory))  # type: ignore[no-untyped-call]
        text = generate_latest(registry)
        if outbox is not None:
            snapshot = CollectorRegistry()
            snapshot.register(_Outbox(outbox))
            text += generate_latest(snapshot)
        return text

    def process_stopped(self) -> None:
        """This worker stops: its gauges leave the sums (its counters stay)."""
        if self.directory is not None:
            mark_process_dead(os.getpid(), str(self.directory))  # type: ignore[no-untyped-call]


class _Outbox:
    """The outbox's figures of one scrape, read from the database by whichever worker answers."""

    def __init__(self, stats: OutboxStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        jobs_by_state = GaugeMetricFamily(
            "service_jobs", "Jobs in the outbox, by state.", labels=["state"]
        )
        for state in ("pending", "waiting", "running", "dead"):
            jobs_by_state.add_metric([state], getattr(self.stats, state))
        yield jobs_by_state
        yield GaugeMetricFamily(
            "service_jobs_oldest_pending_seconds",
            "How long the oldest pending job has waited to run.",
            value=self.stats.oldest_pending_seconds,
        )


_metrics: Metrics | None = None


def metrics() -> Metrics:
    """The process's metrics, made (and listening) on first use."""
    global _metrics
    if _metrics is None:
        directory = multiprocess_directory()
        # prometheus-client picks its kind of value when first imported; pick it again now that
        # the directory is known (the families below are the first this process makes).
        values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
        _metrics = Metrics(directory)
        _metrics.connect()
    return _metrics


class MetricsPort:
    """ASGI middleware: ``GET /metrics`` on the metrics port; everything else to the app."""

    def __init__(
        self,
        app: ASGIApp,
        port: int,
        outbox: Callable[[], Awaitable[OutboxStats | None]],
    ) -> None:
        self.app = app
        self.port = port
        self.outbox = outbox

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Send) -> None:
        server = scope.get("server") if scope["type"] != "lifespan" else None
        if server is None or server[1] != self.port:
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            return  # a websocket on the metrics port: closed unanswered
        if scope["path"] != "/metrics" or scope["method"] not in ("GET", "HEAD"):
            await _answer(send, 404, b"only GET /metrics here\n")
            return
        body = metrics().exposition(await self.outbox())
        await _answer(send, 200, body if scope["method"] == "GET" else b"")


async def _answer(send: Send, status: int, body: bytes) -> None:
    headers = [
        (b"content-type", CONTENT_TYPE_PLAIN_0_0_4.encode()),
        (b"cache-control", b"no-store"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def init_app(app: Quart, outbox: Callable[[], Awaitable[OutboxStats | None]]) -> None:
    """Count ``app``'s requests, and serve ``/metrics`` on ``METRICS_PORT``; if it is set.

    ``outbox``: reads the outbox's figures at each scrape (``None`` if it cannot).
    """
    port = app.config.get("METRICS_PORT")
    if not port:
        return
    counting = metrics()

    async def started(sender: Quart, **extra: Any) -> None:
        _request_started.set(time.perf_counter())  # in the request's task, until it ends

    async def finished(sender: Quart, response: Response, **extra: Any) -> None:
        began = _request_started.get()
        if began is None:
            return
        rule = request.url_rule
        method = request.method if request.method in _METHODS else "other"
        route = rule.rule if rule is not None else "unmatched"
        counting.request_finished(method, route, response.status_code, time.perf_counter() - began)

    async def stopped() -> None:
        counting.process_stopped()

    request_started.connect(started, sender=app, weak=False)
    request_finished.connect(finished, sender=app, weak=False)

    async def read_outbox() -> OutboxStats | None:
        async with app.app_context():
            return await outbox()

    app.after_serving(stopped)
    endpoint = MetricsPort(app.asgi_app, int(port), read_outbox)  # type: ignore[arg-type]
    app.asgi_app = endpoint  # type: ignore[assignment, method-assign]
