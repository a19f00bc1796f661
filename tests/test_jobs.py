"""Jobs: handed over after the commit, each a unit of work of its own, awaited at shutdown."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db import unit_of_work
from service.jobs import enqueue, execute, job, registry
from tests.db.app import make_test_app
from tests.db.models import Widget


async def _note_failure(name: str, *_: object, error: Exception) -> None:
    await Widget(name=f"{name}: {error}").save()


@job(on_failure=_note_failure)
async def add_widget(name: str, fail: bool = False, delay: float = 0.0) -> None:
    await asyncio.sleep(delay)
    await Widget(name=name).save()
    if fail:
        raise RuntimeError("failed after writing")


async def _names(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as connection:
        return list((await connection.scalars(select(Widget.name).order_by(Widget.name))).all())


@pytest.mark.service_committing
async def test_a_failing_job_is_rolled_back_and_its_failure_recorded_apart(
    service_engine: AsyncEngine,
) -> None:
    name = f"{add_widget.__module__}.{add_widget.__qualname__}"

    with pytest.raises(RuntimeError, match="failed after writing"):
        await execute(registry[name], ("half", True))

    assert await _names(service_engine) == ["half: failed after writing"]


@pytest.mark.service_committing
async def test_background_jobs_start_after_the_commit_and_are_awaited_at_shutdown(
    service_database_url: str, service_engine: AsyncEngine
) -> None:
    app = make_test_app({"DATABASE_URL": service_database_url, "JOBS_BACKEND": "background"})
    serving = app.test_app()
    await serving.startup()
    try:
        async with app.app_context():
            with pytest.raises(LookupError):
                async with unit_of_work():
                    enqueue(add_widget, "rolled back")
                    raise LookupError
            async with unit_of_work():
                enqueue(add_widget, "late", False, 0.3)
                assert not app.background_tasks  # nothing starts before the commit
            assert len(app.background_tasks) == 1
        assert await _names(service_engine) == []  # still running, in a task of its own
    finally:
        await serving.shutdown()

    assert await _names(service_engine) == ["late"]  # shutdown waited for it


async def test_only_registered_jobs_can_be_enqueued() -> None:
    async def not_a_job() -> None:
        pass

    with pytest.raises(LookupError, match="@job"):
        async with unit_of_work():
            enqueue(not_a_job)
