"""In a plain Quart app, ``Database(app)`` changes how two errors are answered, and nothing else.

A database that cannot be reached answers 503; a constraint violated answers 409,
raised at ``save()`` or at COMMIT alike. Quart's own HTTP errors stay Quart's, and
every other error is a 500: never a 503 that would have clients retry a bug.
"""

from __future__ import annotations

import logging

import pytest

from service.db import UnitOfWorkError
from tests.newcomer.conftest import Serve, StoredAuthors


@pytest.mark.parametrize("testing", [False, True])
@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/forbidden", 403),  # abort(403)
        ("GET", "/authors/999999", 404),  # get_or_404
        ("GET", "/books/999999", 404),
        ("GET", "/authors/named/nobody", 404),  # first_or_404
        ("GET", "/no/such/url", 404),
        ("DELETE", "/authors", 405),
    ],
)
async def test_quarts_own_http_errors_keep_their_status(
    newcomer: Serve, testing: bool, method: str, path: str, status: int
) -> None:
    client = await newcomer(testing=testing)

    response = await client.open(path, method=method, json=None)

    assert response.status_code == status


async def test_a_404_from_get_or_404_is_rendered_by_the_apps_own_handlers(newcomer: Serve) -> None:
    client = await newcomer()

    response = await client.get("/authors/999999")

    assert response.status_code == 404
    assert "No such author." in (await response.get_data(as_text=True))


@pytest.mark.service_committing
async def test_a_constraint_violated_at_save_answers_409_and_writes_nothing(
    newcomer: Serve, stored_authors: StoredAuthors
) -> None:
    client = await newcomer()
    await client.post("/authors", json={"name": "Ursula"})

    twice = await client.post("/authors", json={"name": "Ursula"})  # unique name, at save()
    orphan = await client.post("/books", json={"title": "Lost", "author_id": 999_999})

    assert (twice.status_code, orphan.status_code) == (409, 409)
    assert await stored_authors() == ["Ursula"]


async def test_a_constraint_violation_is_a_409_in_testing_mode_too(newcomer: Serve) -> None:
    client = await newcomer(testing=True)
    await client.post("/authors", json={"name": "Ursula"})

    response = await client.post("/authors", json={"name": "Ursula"})

    assert response.status_code == 409


async def test_a_bug_in_sql_is_a_500_never_a_503(
    newcomer: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    # "no such table" is an OperationalError on SQLite: it must not read as an outage.
    client = await newcomer()

    with caplog.at_level(logging.ERROR):
        response = await client.get("/broken")

    assert response.status_code == 500
    assert "no_such_table" in caplog.text  # the real error is logged


async def test_an_unhandled_exception_is_a_500(newcomer: Serve) -> None:
    client = await newcomer()

    response = await client.get("/crash")

    assert response.status_code == 500


def test_the_layer_error_is_importable_from_the_public_names() -> None:
    assert issubclass(UnitOfWorkError, RuntimeError)
