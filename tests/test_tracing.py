"""One trace from a request to the job it enqueued, run by a real worker in another process.

The app's spans go to the SDK's in-memory exporter; the worker (Celery's, with
``service.worker``'s task: ``tests/tracing_worker.py``) writes its spans to a file.
The trace context crosses in the outbox's row, not in the broker's message.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from service import tracing
from service.app import create_app
from tests.conftest import Broker
from tests.workers import celery_worker

ROOT = Path(__file__).resolve().parent.parent
START = "from tests.tracing_worker import main; main()"


@pytest.fixture
async def worker_spans(
    broker: Broker, service_database_url: str, tmp_path: Path
) -> AsyncIterator[Path]:
    """A real worker on the test's queue; the file its spans are written to."""
    spans = tmp_path / "worker-spans.jsonl"
    command = [sys.executable, "-c", START, str(spans)]
    async with celery_worker(command, broker, service_database_url, PYTHONPATH=str(ROOT)):
        yield spans


@pytest.fixture
def traced(
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    """This process's traces, on a provider with the SDK's in-memory exporter."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    monkeypatch.setattr(tracing, "_tracing", None)  # and back to what it was, after the test
    active = tracing.tracing(provider)
    assert active is not None
    try:
        yield provider, memory
    finally:
        active.disconnect()


def _read(spans: Path) -> list[dict[str, Any]]:
    if not spans.exists():
        return []
    return [json.loads(line) for line in spans.read_text().splitlines() if line.strip()]


def _in(span: dict[str, Any], trace_id: str) -> bool:
    return bool(span["context"]["trace_id"] == trace_id)


def _hex(number: int) -> str:
    return f"0x{number:032x}"


@pytest.mark.service_committing
async def test_a_request_its_unit_its_statements_and_its_job_in_another_process_are_one_trace(
    broker: Broker,
    service_database_url: str,
    worker_spans: Path,
    traced: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = traced
    app = create_app(
        {
            "DATABASE_URL": service_database_url,
            "CELERY_BROKER_URL": broker.url,
            "CELERY_QUEUE": broker.queue,
            "JOBS_BACKEND": "celery",
            "RATE_LIMIT_ENABLED": False,
        }
    )
    # create_app() wired the app to the traces this process has: the fixture's.
    async with app.test_app():
        client = app.test_client()
        user = await client.post("/users", json={"name": "Ada", "email": "ada@example.com"})
        headers = {"Authorization": f"Bearer {(await user.get_json())['token']}"}
        created = await client.post(
            "/accounts", json={"name": "M", "currency": "USD"}, headers=headers
        )
        account = (await created.get_json())["id"]
        exporter.clear()
        asked = await client.post(
            f"/accounts/{account}/statements",
            json={"from": "2000-01-01", "to": "2000-12-31"},
            headers=headers,
        )
        assert asked.status_code == 202
        local = list(exporter.get_finished_spans())
        [request] = [span for span in local if span.kind == SpanKind.SERVER]
        trace_id = _hex(request.context.trace_id)
        async with asyncio.timeout(30):  # until the worker's job span has ended
            while True:  # a file another process writes: nothing to wait on here
                if any(
                    _in(span, trace_id) and span["name"].startswith("job ")
                    for span in _read(worker_spans)
                ):
                    break
                await asyncio.sleep(0.1)
    remote = _read(worker_spans)

    assert request.name == "POST /accounts/<int:account_id>/statements"
    # The request's unit of work (the jobs' sweeper has units of its own, in traces of their own).
    [unit] = [span for span in local if _parent(span) == request.context.span_id]
    assert unit.name == "unit of work"
    assert unit.attributes is not None and unit.attributes["service.outcome"] == "committed"
    in_trace = [span for span in local if span.context.trace_id == request.context.trace_id]
    statements = [span for span in in_trace if span.kind == SpanKind.CLIENT]
    assert statements, [span.name for span in in_trace]
    assert {_parent(span) for span in statements} == {unit.context.span_id}
    assert len(in_trace) == 2 + len(statements)  # the request, its unit, the unit's statements

    # The worker also ran the periodic jobs the app's sweeper sent it, in traces of their own.
    [job] = [span for span in remote if span["name"].startswith("job ") and _in(span, trace_id)]
    assert job["name"] == "job service.ledger.statements.compute_statement"
    assert job["parent_id"] == f"0x{unit.context.span_id:016x}"  # enqueued in that unit
    assert job["attributes"]["service.job.outcome"] == "done"
    job_units = [
        s
        for s in remote
        if s["name"] == "unit of work" and s["parent_id"] == job["context"]["span_id"]
    ]
    assert [s["attributes"]["service.entry"] for s in job_units] == ["job"]
    children = [s for s in remote if s["parent_id"] == job_units[0]["context"]["span_id"]]
    job_statements = [s for s in children if s["kind"] == "SpanKind.CLIENT"]
    # Besides its statements, the read-only unit that reads the figures (ledger.statements).
    others = [s["name"] for s in children if s["kind"] != "SpanKind.CLIENT"]
    assert job_statements and others == ["unit of work"]
    assert all(s["context"]["trace_id"] == trace_id for s in [*job_units, *job_statements])


def _parent(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None
