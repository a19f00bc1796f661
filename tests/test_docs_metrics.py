"""docs/metrics.md: its example of a plain app counting the layer's events runs as written."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from quart import Quart
from sqlalchemy import text

from service.db import events, session, unit_of_work

PAGE = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"


def _example() -> str:
    [code] = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.DOTALL)
    return str(code)


async def test_the_plain_app_of_the_metrics_page_counts_units_of_work(
    service_database_url: str,
) -> None:
    namespace: dict[str, Any] = {"DATABASE_URL": service_database_url, "__name__": "example"}
    exec(compile(_example(), str(PAGE), "exec"), namespace)
    app: Quart = namespace["app"]
    try:
        async with app.test_app():
            async with unit_of_work():
                await session.execute(text("SELECT 1"))
            with_error = unit_of_work()
            try:
                async with with_error:
                    await session.execute(text("SELECT 1"))
                    raise LookupError("rolled back")
            except LookupError:
                pass
            response = await app.test_client().get("/metrics")
            exposition = await response.get_data(as_text=True)
    finally:
        events.unit_ended.disconnect(namespace["count"])

    counted = {
        (sample.labels["entry"], sample.labels["outcome"]): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == "units_of_work_total"
    }
    assert counted == {("script", "committed"): 1, ("script", "rolled_back_exception"): 1}
