"""OpenTelemetry traces: off unless the standard ``OTEL_*`` variables ask for them.

A request is a span (opentelemetry-instrumentation-asgi, named by its route
template); its unit of work is a child span, current while the unit lasts, so
that its statements (opentelemetry-instrumentation-sqlalchemy) are the unit's
children. A job enqueued in the unit carries the trace context in the outbox
(the job's ``headers``, ``service.jobs.events``): each delivery of it, in
whatever process, is a span of the same trace, whose own unit of work and
statements are its children.

Traces are on when ``OTEL_TRACES_EXPORTER`` names exporters (``otlp``, ``console``),
or an OTLP endpoint is set (``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``: OTLP over HTTP); and not with
``OTEL_SDK_DISABLED=true``. The rest is the SDK's own reading of the variables:
``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``, the
exporter's. The web app, ``service worker`` and ``service`` commands all trace.
"""

from __future__ import annotations

import asyncio
import logging
import os
from contextvars import ContextVar, Token
from typing import Any, cast

from opentelemetry import context, propagate, trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from quart import Quart, request, request_started
from sqlalchemy.ext.asyncio import AsyncEngine

from service import jobs
from service.db import events as db_events
from service.db.quart import Database

__all__ = ["Tracing", "configured", "init_app", "instrument_engine", "provider", "tracing"]

logger = logging.getLogger(__name__)

_FAILED = frozenset({"failed_commit", "conflict", "outage", "rolled_back_exception"})
_Held = tuple[object, Span, Token[Any]]
# The current unit's (or delivery's) span: set where it began, in that task's context.
_unit_span: ContextVar[_Held | None] = ContextVar("service_tracing_unit", default=None)
_job_span: ContextVar[_Held | None] = ContextVar("service_tracing_job", default=None)
_REQUEST_SPAN = "service.tracing.span"


def configured() -> bool:
    """Whether the ``OTEL_*`` variables ask for traces (see the module)."""
    env = os.environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = env.get("OTEL_TRACES_EXPORTER")
    if exporters is not None:
        return exporters.strip().lower() not in ("", "none")
    return bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


_provider: TracerProvider | None = None


def provider() -> TracerProvider | None:
    """The process's tracer provider, made from the ``OTEL_*`` variables; ``None`` if off."""
    global _provider
    if _provider is None and configured():
        made = TracerProvider(resource=Resource.create())
        names = os.environ.get("OTEL_TRACES_EXPORTER", "otlp")
        for name in (part.strip().lower() for part in names.split(",")):
            if name == "console":
                made.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
            elif name == "otlp":
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

                made.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
            elif name != "none":
                logger.warning("OTEL_TRACES_EXPORTER: unknown exporter %r ignored", name)
        trace.set_tracer_provider(made)
        _provider = made
    return _provider


class Tracing:
    """Spans for units of work and job deliveries, from the layer's and the jobs' events."""

    def __init__(self, tracer_provider: trace.TracerProvider) -> None:
        self.provider = tracer_provider
        self.tracer = tracer_provider.get_tracer("service")
        self._engines: set[int] = set()

    def unit_began(self, event: db_events.UnitOfWorkBegan) -> None:
        attributes: dict[str, str | bool] = {
            "service.entry": event.entry,
            "service.readonly": event.readonly,
        }
        span = self.tracer.start_span("unit of work", attributes=attributes)
        _hold(_unit_span, event.unit, span)

    def unit_ended(self, event: db_events.UnitOfWorkEnded) -> None:
        span = _release(_unit_span, event.unit, event.task)
        if span is None:
            return
        span.set_attribute("service.outcome", event.outcome)
        if event.status is not None:
            span.set_attribute("http.response.status_code", event.status)
        if event.outcome in _FAILED:
            span.set_status(Status(StatusCode.ERROR, event.outcome))
            if event.error is not None:
                span.record_exception(event.error)
        span.end()

    def job_enqueued(self, event: jobs.events.JobEnqueued) -> None:
        propagate.inject(event.headers)  # the current span's context: the enqueuing unit's

    def job_started(self, event: jobs.events.JobStarted) -> None:
        parent = propagate.extract(dict(event.headers))
        span = self.tracer.start_span(
            f"job {event.name}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={"service.job.id": event.id, "service.job.attempt": event.attempt},
        )
        _hold(_job_span, (event.id, event.attempt), span)

    def job_ended(self, event: jobs.events.JobEnded) -> None:
        span = _release(_job_span, (event.id, event.attempt), event.task)
        if span is None:
            return
        span.set_attribute("service.job.outcome", event.outcome)
        if event.outcome in ("retry", "dead"):
            span.set_status(Status(StatusCode.ERROR, event.outcome))
            if event.error is not None:
                span.record_exception(event.error)
        span.end()

    def instrument(self, engine: AsyncEngine) -> None:
        """Trace ``engine``'s statements (opentelemetry-instrumentation-sqlalchemy), once."""
        if id(engine.sync_engine) in self._engines:
            return
        self._engines.add(id(engine.sync_engine))
        meter = NoOpMeterProvider().get_meter(__name__)
        usage = meter.create_up_down_counter("db.client.connections.usage")
        EngineTracer(self.tracer, engine.sync_engine, usage)  # type: ignore[no-untyped-call]

    def connect(self) -> None:
        db_events.unit_began.connect(self.unit_began)
        db_events.unit_ended.connect(self.unit_ended)
        jobs.events.job_enqueued.connect(self.job_enqueued)
        jobs.events.job_started.connect(self.job_started)
        jobs.events.job_ended.connect(self.job_ended)

    def disconnect(self) -> None:
        db_events.unit_began.disconnect(self.unit_began)
        db_events.unit_ended.disconnect(self.unit_ended)
        jobs.events.job_enqueued.disconnect(self.job_enqueued)
        jobs.events.job_started.disconnect(self.job_started)
        jobs.events.job_ended.disconnect(self.job_ended)


def _hold(var: ContextVar[_Held | None], key: object, span: Span) -> None:
    """Make ``span`` current in this context until ``_release``."""
    otel_token = context.attach(trace.set_span_in_context(span))
    var.set((key, span, otel_token))


def _release(
    var: ContextVar[_Held | None], key: object, task: asyncio.Task[object] | None
) -> Span | None:
    held = var.get()
    if held is None or held[0] != key:
        return None
    _, span, otel_token = held
    if asyncio.current_task() is task:  # else it ends in another context: nothing to undo
        var.set(None)
        context.detach(otel_token)
    return span


_tracing: Tracing | None = None


def tracing(tracer_provider: trace.TracerProvider | None = None) -> Tracing | None:
    """The process's ``Tracing``, listening: on ``tracer_provider``, else the one already
    listening, else on the ``OTEL_*`` variables' provider; ``None`` if traces are off."""
    global _tracing
    if tracer_provider is None:
        if _tracing is not None:
            return _tracing
        tracer_provider = provider()
        if tracer_provider is None:
            return None
    if _tracing is None or _tracing.provider is not tracer_provider:
        if _tracing is not None:
            _tracing.disconnect()
        _tracing = Tracing(tracer_provider)
        _tracing.connect()
    return _tracing


def instrument_engine(engine: AsyncEngine) -> None:
    """Trace ``engine``'s statements, if traces are on (a worker's or a command's engine)."""
    active = tracing()
    if active is not None:
        active.instrument(engine)


def init_app(
    app: Quart, database: Database, tracer_provider: trace.TracerProvider | None = None
) -> None:
    """Trace ``app``'s requests, units of work, statements and jobs, if traces are on (or
    ``tracer_provider`` is given)."""
    active = tracing(tracer_provider)
    if active is None:
        return

    async def instrument_engine() -> None:
        active.instrument(database.engine)

    def keep_span(span: Span, scope: dict[str, Any]) -> None:
        scope[_REQUEST_SPAN] = span

    async def name_span(sender: Quart, **extra: Any) -> None:
        # Named by the route template: the path, with its ids, would make a name per row.
        rule = request.url_rule
        span: Span | None = cast(dict[str, Any], request.scope).get(_REQUEST_SPAN)
        if rule is not None and span is not None:
            span.update_name(f"{request.method} {rule.rule}")
            span.set_attribute("http.route", rule.rule)

    app.before_serving(instrument_engine)
    request_started.connect(name_span, sender=app, weak=False)
    app.asgi_app = OpenTelemetryMiddleware(  # type: ignore[assignment, method-assign]
        app.asgi_app,
        tracer_provider=active.provider,
        exclude_spans=["receive", "send"],
        server_request_hook=keep_span,
    )
