"""Bad input: schemathesis against ``/openapi.json``, every route, authenticated, every check.

The service runs under Hypercorn on the private PostgreSQL cluster (stricter
than SQLite about what text it stores). Schemathesis generates requests from
the documented schema, valid and invalid, for every operation, with a valid
bearer token, and runs every check it has on each answer (``CHECKS``, all of
schemathesis's registry, none excluded): never a 5xx; only documented statuses,
content types, headers and bodies; an invalid request never accepted and a valid
one not refused; authentication enforced; unsupported methods answered 405 with
a true ``Allow``. Each operation gets its own run of valid ("positive") and of
invalid ("negative") requests; generation is derandomized, so a run is repeatable.

One setting is not a default: a valid request may get a 422 (``POSITIVE_ALSO``).
The schema cannot say that a transfer needs two different accounts of one
currency and enough money, that a period's ``to`` is not before its ``from``,
which cursors the API gave out, or that an email address's domain must not be
reserved (``.test``); the API answers those 422 with a code of their
own, and ``refused_only_by_rules_beyond_the_schema`` (an extra check) fails any
other 422 to a valid request, so a schema that promises more than the validation
accepts still fails the run. The rate limits are off (``bench/harness/servers.py``): the
fuzzer sends thousands of requests, many without a token, from one address.

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
from schemathesis import Case, GenerationMode
from schemathesis.checks import CHECKS as REGISTRY
from schemathesis.checks import load_all_checks
from schemathesis.config import SchemathesisConfig
from schemathesis.core.failures import Failure
from schemathesis.core.result import Ok

from bench.harness import Server, prepare_database
from reliability.conftest import Figures
from reliability.postgres import PrivateCluster

EXAMPLES = 150
"""Per operation and generation mode."""
load_all_checks()
CHECKS: list[Any] = list(REGISTRY.get_all())
"""Every check schemathesis has."""
POSITIVE_ALSO = ["2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx"]
"""positive_data_acceptance's defaults, and 422 (see the module's docstring)."""
RULES_BEYOND_THE_SCHEMA = {
    "insufficient_funds",
    "same_account",
    "currency_mismatch",
    "balance_limit_exceeded",
    "idempotency_key_reused",
    "too_many_tokens",
    "period_not_ended",
}
SPARE_TOKENS = 20


def refused_only_by_rules_beyond_the_schema(ctx: Any, response: Any, case: Case[Any]) -> None:
    """A valid request refused with a 422 must be refused for a rule the schema cannot state."""
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return
    if response.status_code != 422:
        return
    error = response.json()["error"]
    details = error.get("details") or []
    if error["code"] in RULES_BEYOND_THE_SCHEMA or (
        details and all(_beyond_the_schema(detail) for detail in details)
    ):
        return
    raise Failure(
        operation=case.operation.label,
        title="A valid request was refused by validation",
        message=f"422 {error}",
    )


def _beyond_the_schema(detail: dict[str, Any]) -> bool:
    message = str(detail.get("message"))
    return (
        detail.get("field") == "cursor"  # one the API did not give out
        or "must not be before" in message  # a period's `to` before its `from`
        # `format: email` says nothing of reserved domains (.test, .invalid, .localhost)
        or (detail.get("field") == "email" and "special-use or reserved name" in message)
    )


class Caller:
    """The fuzzed user's headers: a token, and spares for when the fuzzer revokes it."""

    def __init__(self, tokens: list[tuple[int, str]]) -> None:
        self.tokens = tokens

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[0][1]}"}

    def after(self, case: Case[Any], response: Any) -> None:
        # DELETE /tokens/{id} may name the very token in use: go on with a spare.
        if case.method == "DELETE" and response.status_code == 204:
            revoked = case.path_parameters and case.path_parameters.get("token_id")
            self.tokens = [token for token in self.tokens if token[0] != revoked]
            assert self.tokens, "the fuzzer revoked every spare token"


Served = tuple[Server, Caller]


@pytest.fixture(scope="module")
def fuzzed_server(
    postgres: PrivateCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """The service on a fresh database, and a user with three funded accounts and spare tokens."""
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
            tokens = [(http.get("/tokens", headers=headers).json()["items"][0]["id"], "")]
            tokens[0] = (tokens[0][0], headers["Authorization"].removeprefix("Bearer "))
            for number in range(SPARE_TOKENS):
                spare = http.post("/tokens", json={"name": f"spare {number}"}, headers=headers)
                tokens.append((spare.json()["id"], spare.json()["token"]))
            for currency in ("USD", "USD", "EUR"):
                account = http.post(
                    "/accounts", json={"name": "fuzzed", "currency": currency}, headers=headers
                ).raise_for_status()
                http.post(
                    f"/accounts/{account.json()['id']}/deposits",
                    json={"amount": 10**9},
                    headers=headers,
                ).raise_for_status()
        yield server, Caller(tokens)
    finally:
        server.stop()


def _fuzz(
    case_strategy: Any, server: Server, caller: Caller, seen: Counter[int], refusals: Counter[str]
) -> None:
    @given(case=case_strategy)
    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Case[Any]) -> None:
        response = case.call(base_url=server.base, headers=caller.headers)
        seen[response.status_code] += 1
        if response.status_code == 422:
            refusals[response.json()["error"]["code"]] += 1
        caller.after(case, response)
        case.validate_response(
            response,
            checks=CHECKS,
            additional_checks=[refused_only_by_rules_beyond_the_schema],
            headers=caller.headers,
        )

    run()


@pytest.mark.timeout(600)
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_generated_request_gets_a_5xx_or_breaks_the_documented_schema(
    mode: GenerationMode, fuzzed_server: Served, figures: Figures
) -> None:
    server, caller = fuzzed_server
    config = SchemathesisConfig.from_dict(
        {"checks": {"positive_data_acceptance": {"expected-statuses": POSITIVE_ALSO}}}
    )
    schema = schemathesis.openapi.from_url(f"{server.base}/openapi.json", config=config)
    statuses: Counter[int] = Counter()
    refusals: Counter[str] = Counter()
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
            strategy = operation.as_strategy(generation_mode=mode)
            _fuzz(strategy, server, caller, statuses, refusals)
        except Unsatisfiable:  # no parameter, no body, no token: nothing can be made invalid
            nothing_to_break.append(operation.label)
        except (Exception, BaseExceptionGroup) as error:  # every operation gets its run first
            failures[operation.label] = f"{type(error).__name__}: {error}"[:2000]

    figures("operations fuzzed", operations)
    figures("requests sent", sum(statuses.values()))
    if nothing_to_break:
        figures("operations with no invalid request to make", ", ".join(nothing_to_break))
    figures("answers by status", dict(sorted(statuses.items())))
    figures("422s by code", dict(refusals.most_common()))
    figures("checks", len(CHECKS) + 1)
    assert operations >= 16
    assert not failures, "\n\n".join(f"{label}: {failure}" for label, failure in failures.items())
