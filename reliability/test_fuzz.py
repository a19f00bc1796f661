"""Bad input: schemathesis against ``/openapi.json``, every route, authenticated.

The service runs under Hypercorn on the private PostgreSQL cluster (stricter
than SQLite about what text it stores). Schemathesis generates requests from
the documented schema, valid and invalid, for every operation, with a valid
bearer token, and checks each answer: never a 5xx, always the documented
content type and, for a documented status, the documented body; and an invalid
request is never accepted (2xx). Each operation
gets its own run of valid ("positive") and of invalid ("negative") requests;
generation is derandomized, so a run is repeatable.

The hand-written bad-input cases (malformed JSON, wrong types, huge and
negative numbers, unicode and SQL-looking text stored verbatim, oversized
bodies, missing and forged tokens) are in ``tests/ledger/``, run by
``make test`` on both databases.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode, checks
from schemathesis.core.result import Ok

from bench.ledger_load import prepare_database
from bench.servers import Server
from reliability.conftest import Figures
from reliability.postgres import PrivateCluster

EXAMPLES = 150
"""Per operation and generation mode."""
CHECKS = [
    checks.not_a_server_error,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.negative_data_rejection,
    checks.ignored_auth,
]

Served = tuple[Server, dict[str, str]]


@pytest.fixture(scope="module")
def fuzzed_server(
    postgres: PrivateCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """The service on a fresh database, and the headers of a user with three funded accounts."""
    url = postgres.url("reliability_fuzz")
    asyncio.run(prepare_database(url))
    server = Server(
        "fuzz", "service.app:app", {"DATABASE_URL": url}, tmp_path_factory.mktemp("fuzz")
    )
    try:
        server.wait_ready("/readyz")
        with httpx.Client(base_url=server.base) as http:
            user = http.post("/users", json={"name": "Fuzz", "email": "fuzz@example.com"})
            headers = {"Authorization": f"Bearer {user.raise_for_status().json()['token']}"}
            for currency in ("USD", "USD", "EUR"):
                account = http.post(
                    "/accounts", json={"name": "fuzzed", "currency": currency}, headers=headers
                ).raise_for_status()
                http.post(
                    f"/accounts/{account.json()['id']}/deposits",
                    json={"amount": 10**9},
                    headers=headers,
                ).raise_for_status()
        yield server, headers
    finally:
        server.stop()


def _fuzz(case_strategy: Any, server: Server, headers: dict[str, str], seen: Counter[int]) -> None:
    @given(case=case_strategy)
    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Case[Any]) -> None:
        response = case.call_and_validate(base_url=server.base, headers=headers, checks=CHECKS)
        seen[response.status_code] += 1

    run()


@pytest.mark.timeout(600)
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_generated_request_gets_a_5xx_or_breaks_the_documented_schema(
    mode: GenerationMode, fuzzed_server: Served, figures: Figures
) -> None:
    server, headers = fuzzed_server
    schema = schemathesis.openapi.from_url(f"{server.base}/openapi.json")
    statuses: Counter[int] = Counter()
    failures: dict[str, str] = {}
    nothing_to_break: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        if not isinstance(result, Ok):
            failures[f"operation {operations}"] = f"not understood: {result.err()}"
            continue
        operation = result.ok()
        operations += 1
        try:
            _fuzz(operation.as_strategy(generation_mode=mode), server, headers, statuses)
        except Unsatisfiable:  # no parameter, no body, no token: nothing can be made invalid
            nothing_to_break.append(operation.label)
        except Exception as error:  # noqa: BLE001 - every operation gets its run, then all fail
            failures[operation.label] = f"{type(error).__name__}: {error}"[:2000]

    figures("operations fuzzed", operations)
    figures("requests sent", sum(statuses.values()))
    if nothing_to_break:
        figures("operations with no invalid request to make", ", ".join(nothing_to_break))
    figures("answers by status", dict(sorted(statuses.items())))
    assert operations >= 11
    assert not failures, "\n\n".join(f"{label}: {failure}" for label, failure in failures.items())
