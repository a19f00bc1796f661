"""CPU instructions per request, counted by callgrind: the layer's cost without the noise.

``bench/uow.py`` measures requests/s under Hypercorn, but on this shared
machine a round's ratio swings by 10-20%, more than the 3% it must resolve.
Callgrind counts the instructions the server process executes, the same every
run, whatever else the machine does. Each measurement runs the app in-process
(the same ``bench.apps`` apps and routes, called through ASGI as Hypercorn
would), once with a warm-up only and once with ``REQUESTS`` more requests;
the difference divided by ``REQUESTS`` is the cost of one request. A database
server's own work (PostgreSQL's) is outside the process and not counted.

For the route that uses no database, whose cost is a few hooks against the
whole request, it also serves each app with Hypercorn in the counted process
(``hypercorn.asyncio.serve``) and drives it over HTTP from outside, so that the
figure includes the server's own work on each request, as ``bench/uow.py`` does.

Written to ``docs/benchmarks/results/uow_instructions.md``.

Usage: ``python bench/uow_instructions.py [--quick] [--db sqlite|postgresql|all]`` (needs valgrind).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

WARMUP = 60
REQUESTS = 400
QUICK_REQUESTS = 40
THRESHOLD = 0.97

# name: (app factory, method, path); "{}" takes a random seeded id.
ENDPOINTS = {
    "layer-read": ("layer_app", "GET", "/layer/items/{}"),
    "hand-read": ("layer_app", "GET", "/hand/items/{}"),
    "layer-write": ("layer_app", "POST", "/layer/items"),
    "hand-write": ("layer_app", "POST", "/hand/items"),
    "layer-nodb": ("layer_app", "GET", "/nodb"),
    "plain-nodb": ("plain_app", "GET", "/nodb"),
}


async def _call(app: Any, method: str, path: str) -> int:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"bench"), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1),
        "server": ("bench", 80),
        "extensions": {},
    }
    delivered = False
    never = asyncio.Event()
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": b"{}", "more_body": False}
        await never.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def _child(endpoint: str, measured: int) -> None:
    from bench import apps
    from bench.uow import ROWS

    factory, method, path = ENDPOINTS[endpoint]
    app = getattr(apps, factory)()
    await app.startup()
    rng = random.Random(0)
    try:
        for count in (WARMUP, measured):
            for _ in range(count):
                status = await _call(app, method, path.format(rng.randint(1, ROWS)))
                assert status < 400, status
    finally:
        await app.shutdown()


async def _serve(factory: str, port: int) -> None:
    """Serve ``factory()`` with Hypercorn in this process until SIGTERM."""
    import signal

    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    from bench import apps

    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await serve(getattr(apps, factory)(), config, shutdown_trigger=stop.wait)


def _served_instructions(factory: str, path: str, measured: int, work: Path) -> int:
    """Instructions of a Hypercorn process serving WARMUP + ``measured`` requests."""
    import http.client
    import signal
    import socket
    import time

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = work / f"served-{factory}-{measured}.out"
    server = subprocess.Popen(
        [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            __file__,
            "--serve",
            factory,
            str(port),
        ],
        env={**os.environ, "PYTHONHASHSEED": "0"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                connection.connect()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the server under valgrind did not start") from None
                time.sleep(0.5)
        for _ in range(WARMUP + measured):  # one keep-alive connection, one request at a time
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
            assert response.status == 200, response.status
        connection.close()
    finally:
        server.send_signal(signal.SIGTERM)
        _, errors = server.communicate(timeout=300)
    found = re.search(r"Collected : (\d+)", errors)
    if found is None:
        raise RuntimeError(f"{factory}: {errors[-2000:]}")
    return int(found.group(1))


def _served_per_request(factory: str, path: str, work: Path, requests: int) -> float:
    with ThreadPoolExecutor(2) as pool:
        base, more = pool.map(lambda n: _served_instructions(factory, path, n, work), (0, requests))
    return (more - base) / requests


def _instructions(endpoint: str, url: str, measured: int, work: Path) -> int:
    out = work / f"{endpoint}-{measured}.out"
    completed = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            __file__,
            "--child",
            endpoint,
            str(measured),
        ],
        env={
            **os.environ,
            "DATABASE_URL": url,
            "PYTHONHASHSEED": "0",
            "RATE_LIMIT_ENABLED": "false",
        },
        capture_output=True,
        text=True,
        check=False,
    )
    found = re.search(r"Collected : (\d+)", completed.stderr)
    if completed.returncode != 0 or found is None:
        raise RuntimeError(f"{endpoint}: {completed.stderr[-2000:]}")
    return int(found.group(1))


def _per_request(endpoint: str, url: str, work: Path, requests: int) -> float:
    with ThreadPoolExecutor(2) as pool:  # two cores: both runs at once
        base, more = pool.map(lambda n: _instructions(endpoint, url, n, work), (0, requests))
    return (more - base) / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=["sqlite", "postgresql", "all"], default="all")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_REQUESTS} requests")
    parser.add_argument(
        "--served-only", action="store_true", help="only the no-database route, served"
    )
    parser.add_argument(
        "--child", nargs=2, metavar=("ENDPOINT", "REQUESTS"), help=argparse.SUPPRESS
    )
    parser.add_argument("--serve", nargs=2, metavar=("FACTORY", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        asyncio.run(_child(args.child[0], int(args.child[1])))
        return
    if args.serve:
        asyncio.run(_serve(args.serve[0], int(args.serve[1])))
        return

    from bench import harness
    from bench.uow import drop, prepare

    work = Path(tempfile.mkdtemp(prefix="uow-instructions-"))
    urls = {
        "sqlite": f"sqlite+aiosqlite:///{work}/bench.db",
        "postgresql": harness.postgres_url("uow"),
    }
    databases = list(urls) if args.db == "all" else [args.db]
    comparisons: list[tuple[str, str, str, str]] = []
    for database in databases:
        comparisons += [
            (database, "GET /items/<id>", "layer-read", "hand-read"),
            (database, "POST /items", "layer-write", "hand-write"),
        ]
    comparisons.append((databases[0], "GET /nodb", "layer-nodb", "plain-nodb"))
    if args.served_only:
        comparisons = []

    requests = QUICK_REQUESTS if args.quick else REQUESTS
    print(f"callgrind; {requests} requests after a warm-up of {WARMUP}; instructions per request")
    rows: list[list[object]] = []

    def row(where: str, label: str, ours: float, theirs: float) -> None:
        # Throughput is inversely proportional to the CPU cost of a request.
        ratio = theirs / ours
        verdict = "met" if ratio >= THRESHOLD else "**not met**"
        rows.append(
            [where, f"`{label}`", f"{ours:,.0f}", f"{theirs:,.0f}", f"{ratio:.3f}", verdict]
        )
        print(f"{where:10} {label:24} {ours:12,.0f} {theirs:12,.0f} {ratio:7.3f}  {verdict}")

    for database, label, layer, baseline in comparisons:
        url = urls[database]
        asyncio.run(prepare(url))
        try:
            ours = _per_request(layer, url, work, requests)
            theirs = _per_request(baseline, url, work, requests)
        finally:
            asyncio.run(drop(url))
        row(database if label != "GET /nodb" else "none", label, ours, theirs)
    # The same route, with the work Hypercorn does for each request counted too.
    ours = _served_per_request("layer_app", "/nodb", work, requests)
    theirs = _served_per_request("plain_app", "/nodb", work, requests)
    row("none", "GET /nodb, served", ours, theirs)
    header = ["database", "endpoint", "layer", "baseline", "baseline/layer", f"target {THRESHOLD}"]
    how = (
        f"CPU instructions per request under callgrind: {requests} requests after a warm-up of "
        f"{WARMUP}, in-process (the last row: served by Hypercorn in the counted process). "
        "Identical from run to run, but blind to thread hops, round trips and the event "
        "loop's turns: speed claims rest on `uow.md`'s wall-clock ratios, not on these."
    )
    harness.write_results(
        "uow_instructions",
        how,
        harness.markdown_table(header, rows, left=2),
        quick=args.quick,
    )


if __name__ == "__main__":
    main()
