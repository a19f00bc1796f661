"""The Prometheus endpoint, scraped and parsed with prometheus-client's own parser.

Each scenario reads the figures before and after, and checks that what it did moved
the families it should (the process's figures also count the rest of the suite).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from quart import Quart
from quart.typing import ResponseReturnValue
from sqlalchemy import event, text
from sqlalchemy.orm import Session

from service.app import db
from service.db import session, unit_of_work
from service.jobs import drain, enqueue
from tests.jobs import examples
from tests.service_app import make_service_test_app

PORT = 9464

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _refused_commit(sync_session: Session) -> None:
    raise RuntimeError("refused by a commit hook")


async def create_then_fail_commit() -> ResponseReturnValue:
    """Its COMMIT fails, with an error that is neither a conflict nor an outage."""
    await session.execute(text("SELECT 1"))
    event.listen(session().sync_session, "before_commit", _refused_commit)
    return {"ok": True}, 201


def metered_app(url: str, **config: Any) -> Quart:
    app = make_service_test_app(
        {
            "DATABASE_URL": url,
            "TESTING": True,
            "RATE_LIMIT_ENABLED": False,
            "METRICS_PORT": PORT,
            "PROPAGATE_EXCEPTIONS": False,
            **config,
        }
    )
    app.post("/_metrics/failed-commit")(create_then_fail_commit)
    return app


@pytest.fixture
async def app(service_database_url: str) -> AsyncIterator[Quart]:
    app = metered_app(service_database_url)
    async with app.test_app():
        yield app


async def scrape(app: Quart, *, port: int = PORT, path: str = "/metrics") -> httpx.Response:
    transport = httpx.ASGITransport(app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url=f"http://127.0.0.1:{port}") as c:
        return await c.get(path)


def parse(exposition: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


async def samples(app: Quart) -> Samples:
    response = await scrape(app)
    assert response.status_code == 200, response.text
    return parse(response.text)


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


UNITS = "service_db_units_of_work_total"


async def test_a_422_a_failed_commit_and_a_conflict_each_count_under_their_outcome(
    app: Quart,
) -> None:
    client = app.test_client()
    before = await samples(app)

    assert (await client.post("/widgets?status=422", json={"name": "a"})).status_code == 422
    assert (await client.post("/_metrics/failed-commit")).status_code == 500
    assert (await client.post("/widgets", json={"name": "twice"})).status_code == 201
    assert (await client.post("/widgets", json={"name": "twice"})).status_code == 409

    after = await samples(app)
    for outcome, count in [
        ("rolled_back_status", 1),
        ("failed_commit", 1),
        ("conflict", 1),
        ("committed", 1),
        ("rolled_back_exception", 0),
        ("outage", 0),
    ]:
        assert moved(before, after, UNITS, entry="request", outcome=outcome) == count, outcome
    requests = "service_http_requests_total"
    assert moved(before, after, requests, method="POST", route="/widgets", status="422") == 1
    assert moved(before, after, requests, method="POST", route="/widgets", status="409") == 1
    assert moved(before, after, requests, method="POST", route="/widgets", status="201") == 1
    histogram = "service_http_request_duration_seconds_count"
    assert moved(before, after, histogram, method="POST", route="/widgets") == 3
    # Two units asked to commit: the one that did, and the one whose COMMIT failed.
    commits = "service_db_commit_duration_seconds_count"
    assert moved(before, after, commits, entry="request") == 2


async def test_a_job_that_fails_until_dead_counts_its_retries_and_shows_dead(app: Quart) -> None:
    before = await samples(app)
    async with unit_of_work():
        enqueue(examples.always_fails, "metered")
    assert await drain() == 1  # three attempts, backoffs skipped

    after = await samples(app)
    job = "tests.jobs.examples.always_fails"
    deliveries = "service_jobs_deliveries_total"
    assert moved(before, after, "service_jobs_enqueued_total", job=job) == 1
    assert moved(before, after, deliveries, job=job, outcome="retry") == 2
    assert moved(before, after, deliveries, job=job, outcome="dead") == 1
    assert moved(before, after, deliveries, job=job, outcome="done") == 0
    assert (
        value(after, "service_jobs", state="dead")
        == value(before, "service_jobs", state="dead") + 1
    )
    # Each attempt's unit rolled back on the body's exception.
    assert moved(before, after, UNITS, entry="job", outcome="rolled_back_exception") == 3


async def test_the_metrics_answer_on_their_port_only(app: Quart) -> None:
    assert (await app.test_client().get("/metrics")).status_code == 404
    assert (await scrape(app, path="/users")).status_code == 404
    assert (await scrape(app, port=PORT + 1)).status_code == 404  # the API's port: no /metrics


@pytest.mark.service_committing
async def test_a_pool_timeout_is_counted_and_its_unit_is_an_outage(
    service_database_url: str,
) -> None:
    app = metered_app(
        service_database_url,
        DATABASE_POOL_SIZE=1,
        DATABASE_MAX_OVERFLOW=0,
        DATABASE_POOL_TIMEOUT=0.2,
    )
    async with app.test_app():
        before = await samples(app)
        async with app.app_context():
            held = await db.engine.connect()  # the pool's only connection
        try:
            response = await app.test_client().get("/widgets")
            during = await scrape(app)
        finally:
            await held.close()
        after = await samples(app)

    assert response.status_code == 503
    assert during.status_code == 200  # the scrape gets its figures, though not the outbox's
    # The request's checkout timed out, and so did the scrape's own read of the outbox.
    assert moved(before, after, "service_db_pool_timeouts_total") == 2
    assert moved(before, after, UNITS, entry="request", outcome="outage") == 1
    assert moved(before, after, UNITS, entry="metrics", outcome="outage") == 1
    waits = "service_db_pool_wait_seconds_bucket"
    assert moved(before, after, waits, le="0.1") < moved(before, after, waits, le="0.25")
    assert value(parse(during.text), "service_db_pool_checked_out") == 1
    assert value(after, "service_db_pool_checked_out") == 0


async def test_rate_limit_refusals_are_counted_by_limit(service_database_url: str) -> None:
    app = metered_app(
        service_database_url, RATE_LIMIT_ENABLED=True, RATE_LIMIT_REGISTRATIONS="1/hour"
    )
    async with app.test_app():
        before = await samples(app)
        client = app.test_client()
        for number in range(3):
            await client.post("/users", json={"name": "n", "email": f"n{number}@example.com"})
        after = await samples(app)
    assert moved(before, after, "service_rate_limit_refusals_total", limit="registration") == 2
