"""The endpoint under real Hypercorn with two worker processes: every scrape sums both."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import httpx
from prometheus_client.multiprocess import MultiProcessCollector

from bench.harness import Server, free_port, prepare_database
from tests.test_metrics import parse, value

BATCH = 60
BATCHES = 30
NAME, LABELS = "service_http_requests_total", {"method": "GET", "route": "/healthz"}


def _served(server: Server) -> dict[str, float]:
    """Each worker's own count, from the files it writes in the directory the service kept
    for this server (named after Hypercorn's parent process)."""
    found = list((Path(tempfile.gettempdir()) / "service-metrics").glob(f"{server.process.pid}-*"))
    served: dict[str, float] = {}
    for directory in found:
        for counts in directory.glob("counter_*.db"):
            pid = counts.stem.removeprefix("counter_")
            for family in MultiProcessCollector.merge([str(counts)]):  # type: ignore[no-untyped-call]
                for sample in family.samples:
                    if sample.name == NAME and sample.labels.get("route") == "/healthz":
                        served[pid] = sample.value
    return served


async def test_two_workers_figures_are_summed_in_every_scrape(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/metered.db"
    await prepare_database(url)
    metrics_port = free_port()
    server = Server(
        "metered",
        "service.app:app",
        {"DATABASE_URL": url, "METRICS_PORT": str(metrics_port), "ACCESS_LOG": "false"},
        tmp_path,
        workers=2,
        options=("--bind", f"127.0.0.1:{metrics_port}"),
    )
    try:
        await asyncio.to_thread(server.wait_ready, "/readyz")
        # A connection per request, many at once: the kernel hands them to both workers, though
        # not in any set proportion: batches go until each worker has served some.
        limits = httpx.Limits(max_keepalive_connections=0)
        statuses: list[int] = []
        async with httpx.AsyncClient(base_url=server.base, limits=limits, timeout=30) as client:
            for _ in range(BATCHES):
                sent = [client.get("/healthz") for _ in range(BATCH)]
                statuses += [response.status_code for response in await asyncio.gather(*sent)]
                if len(_served(server)) == 2:
                    break
            assert (await client.get("/metrics")).status_code == 404  # not on the API's port
        requests = len(statuses)
        assert statuses == [200] * requests
        metrics_base = f"http://127.0.0.1:{metrics_port}"
        async with httpx.AsyncClient(base_url=metrics_base, limits=limits, timeout=30) as client:
            scrapes = [await client.get("/metrics") for _ in range(6)]
    finally:
        await asyncio.to_thread(server.stop)

    for scrape in scrapes:  # whichever worker answered, it counted both workers' requests
        assert scrape.status_code == 200
        assert value(parse(scrape.text), NAME, **LABELS, status="200") == requests
    served = _served(server)
    assert len(served) == 2 and min(served.values()) > 0, served
    assert sum(served.values()) == requests
