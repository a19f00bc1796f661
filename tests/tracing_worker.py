"""``service worker`` with traces kept in a file: the trace test's real worker.

    python -c 'from tests.tracing_worker import main; main()' SPANS

Celery's own worker (``service.worker``'s app and task, one process: the solo pool),
with the SDK's tracer provider exporting every span, as it ends, to the file SPANS,
one JSON object a line.
"""

from __future__ import annotations

import sys
from typing import IO

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

from service import tracing


def _line(span: ReadableSpan) -> str:
    return f"{span.to_json(indent=None)}\n"


def main() -> None:
    out: IO[str] = open(sys.argv[1], "a", buffering=1)  # noqa: SIM115 - open while it runs
    provider = TracerProvider(resource=Resource.create({"service.name": "worker"}))
    provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=out, formatter=_line)))
    tracing.tracing(provider)

    from service.worker import celery_app

    celery_app.worker_main(["worker", "--pool=solo", "--loglevel=INFO"])
