"""Throughput of the unit-of-work layer against hand-written sessions, under Hypercorn.

A benchmark, not a timed test: it always exits 0, prints its verdicts and writes them to
``docs/benchmarks/results/uow.md``.

For each database (a SQLite file in a temporary directory; PostgreSQL in the
database ``<BENCH_POSTGRES_URL's>_uow``, ``.../bench_uow`` by default, created if
missing) it builds and seeds the ``bench_items`` table
with an engine of its own, serves ``bench.apps:layer_app()`` with one Hypercorn
worker, and drives ``GET /{layer,hand}/items/<random id>`` and
``POST /{layer,hand}/items`` with wrk. Then ``GET /nodb`` on the layer's app,
and on the service's whole ``create_app()``, each against a bare Quart app, each
app in its own Hypercorn process. ``bench/apps.py`` says what each side does and
why the comparison is fair.

The machine is small and shared, so the two sides of a comparison alternate:
after a warm-up of each, every round runs both, the order flipping each round
(A B, B A, ...) so that a slow drift of the machine weighs on both alike. The
verdict compares the medians of the rounds (A/B >= 0.97); the per-round ratios
and a bootstrap interval of the ratio are printed too, to show the noise. 7 rounds
of 3 s after a 2 s warm-up; ``--quick``: 3 rounds of 2 s.

Usage: ``python bench/uow.py [--quick] [--rounds N] [--seconds S] [--db sqlite|postgresql|all]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `bench` and `service` importable
    sys.path.insert(0, str(ROOT))

from bench import harness  # noqa: E402 - importable once the path is set
from bench.harness import Plan, Rotation, Target, markdown_table, serving  # noqa: E402

ROWS = 1000
# Within the engine's default pool (pool_size=5): past it, QueuePool closes each
# overflow connection when it is returned, and both sides would mostly measure
# connection churn (a PostgreSQL backend forked per request). One Hypercorn
# worker is CPU-bound from two or three connections on already.
CONNECTIONS = 4
THRESHOLD = 0.97

GET_LUA = """\
-- GET <the URL's path><a random id in 1..rows>
local rows
function init(args)
  rows = tonumber(args[1])
end
function request()
  return wrk.format("GET", wrk.path .. math.random(1, rows))
end
"""

POST_LUA = """\
wrk.method = "POST"
wrk.body = "{}"
wrk.headers["Content-Type"] = "application/json"
"""

FULL = Plan(rounds=7, seconds=3, warmup_seconds=2)
QUICK = Plan(rounds=3, seconds=2, warmup_seconds=1, quick=True)


# --- database preparation -------------------------------------------------------------------


async def prepare(url: str) -> None:
    """(Re)create ``bench_items`` with ``ROWS`` rows, on an engine of the driver's own."""
    from sqlalchemy import insert

    from bench.apps import TABLE
    from service.db import Model, make_engine

    if url.startswith("postgresql"):
        await harness.ensure_postgres_database(url)
    table = Model.metadata.tables[TABLE]
    engine = make_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(lambda sync: table.drop(sync, checkfirst=True))
            await connection.run_sync(lambda sync: table.create(sync))
            await connection.execute(
                insert(table), [{"name": f"item-{i}"} for i in range(1, ROWS + 1)]
            )
    finally:
        await engine.dispose()


async def drop(url: str) -> None:
    from bench.apps import TABLE
    from service.db import Model, make_engine

    table = Model.metadata.tables[TABLE]
    engine = make_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(lambda sync: table.drop(sync, checkfirst=True))
    finally:
        await engine.dispose()


# --- the comparisons ------------------------------------------------------------------------


@dataclass
class Result:
    database: str
    endpoint: str
    a: str
    b: str
    rotation: Rotation

    def interval(self, level: float = 0.9, draws: int = 2000) -> tuple[float, float]:
        """A bootstrap interval of A/B, resampling whole rounds: how far noise moves it."""
        rng = random.Random(0)
        pairs = [
            (x.rate, y.rate)
            for x, y in zip(self.rotation.bursts[self.a], self.rotation.bursts[self.b], strict=True)
        ]

        def ratio(draw: list[tuple[float, float]]) -> float:
            base = statistics.median(y for _, y in draw)
            return statistics.median(x for x, _ in draw) / base if base else 0.0

        ratios = sorted(ratio(rng.choices(pairs, k=len(pairs))) for _ in range(draws))
        tail = int(draws * (1 - level) / 2)
        return ratios[tail], ratios[-tail - 1]


def compare(database: str, endpoint: str, a: Target, b: Target, plan: Plan) -> Result:
    """Warm both up, then ``plan.rounds`` rounds of both, the order flipping each round."""
    rotation = harness.rotate(
        f"{database} {endpoint}: {a.label} {a.path} vs {b.label} {b.path}", [a, b], plan
    )
    return Result(database, endpoint, a.label, b.label, rotation)


def bench_database(
    database: str, url: str, plan: Plan, work: Path, scripts: dict[str, Path]
) -> list[Result]:
    asyncio.run(prepare(url))
    rows = (str(ROWS),)
    try:
        with serving(
            f"layer-{database}",
            "bench.apps:layer_app()",
            {"DATABASE_URL": url},
            work,
            "/layer/items/1",
        ) as server:
            return [
                compare(
                    database,
                    "GET /items/<id>",
                    Target("layer", server, "/layer/items/", scripts["get"], rows, CONNECTIONS),
                    Target("hand", server, "/hand/items/", scripts["get"], rows, CONNECTIONS),
                    plan,
                ),
                compare(
                    database,
                    "POST /items",
                    Target("layer", server, "/layer/items", scripts["post"], (), CONNECTIONS),
                    Target("hand", server, "/hand/items", scripts["post"], (), CONNECTIONS),
                    plan,
                ),
            ]
    finally:
        asyncio.run(drop(url))


def bench_nodb(plan: Plan, work: Path, scripts: dict[str, Path]) -> list[Result]:
    """``GET /nodb``: the layer's app, then the service's whole app, each against bare Quart."""
    # The apps with a Database need a DATABASE_URL to start serving; /nodb never connects.
    env = {"DATABASE_URL": f"sqlite+aiosqlite:///{work / 'nodb.db'}"}
    results: list[Result] = []
    with serving("plain-nodb", "bench.apps:plain_app()", env, work, "/nodb") as plain:
        for label, target in (("layer", "layer_app()"), ("service", "service_app()")):
            with serving(f"{label}-nodb", f"bench.apps:{target}", env, work, "/nodb") as server:
                results.append(
                    compare(
                        "none",
                        "GET /nodb",
                        Target(label, server, "/nodb", scripts["plain"], (), CONNECTIONS),
                        Target("plain", plain, "/nodb", scripts["plain"], (), CONNECTIONS),
                        plan,
                    )
                )
    return results


def report(results: list[Result], plan: Plan) -> None:
    rows = []
    for r in results:
        rotation, a, b = r.rotation, r.a, r.b
        low, high = r.interval()
        cpu_a, cpu_b = rotation.cpu_rate(a), rotation.cpu_rate(b)
        cpu = f"{cpu_a / cpu_b:.3f}" if cpu_a and cpu_b else "n/a"
        ratio = rotation.ratio(a, b)
        verdict = "met" if ratio >= THRESHOLD and not rotation.problems else "**not met**"
        rows.append(
            [
                r.database,
                f"`{r.endpoint}`",
                f"{a} vs {b}",
                f"{rotation.rate(a):,.0f}",
                f"{rotation.rate(b):,.0f}",
                f"{ratio:.3f}",
                f"{low:.3f} - {high:.3f}",
                f"{statistics.median(rotation.round_ratios(a, b)):.3f}",
                cpu,
                verdict,
            ]
        )
    header = ["database", "endpoint", "A vs B", "A req/s", "B req/s", "A/B", "90% interval"]
    header += ["per-round median", "CPU A/B", f"target {THRESHOLD}"]
    notes = " ".join(
        [
            "layer: `service.db.quart.Database` on bare Quart.",
            "hand: `async_sessionmaker` on the same engine, in the same app.",
            "plain: bare Quart. service: `service.app.create_app()`.",
            "A/B: the ratio of the medians of req/s.",
            "90% interval: bootstrap over the rounds; a verdict whose interval straddles",
            "the target is within this machine's noise.",
            "per-round median: the median of the per-round ratios, which a drift of the",
            "machine between rounds disturbs less.",
            "CPU A/B: the ratio of the medians of requests per CPU-second of the server.",
        ]
    )
    problems = [p for r in results for p in r.rotation.problems]
    body = [markdown_table(header, rows, left=3), notes]
    if problems:
        body += ["Problems:", "\n".join(f"- {p}" for p in problems)]
    how = (
        f"The layer against hand-written sessions in one app, one Hypercorn worker, "
        f"`wrk -t1 -c{CONNECTIONS}`, the two sides in alternating bursts: {plan}."
    )
    harness.write_results("uow", how, "\n\n".join(body), quick=plan.quick)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    harness.add_plan_options(parser, FULL, QUICK)
    parser.add_argument("--db", choices=["sqlite", "postgresql", "all"], default="all")
    args = parser.parse_args(argv)
    plan = harness.plan_from(args, FULL, QUICK)
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk); nothing measured")
        return 0
    harness.stop_servers_on_sigterm()
    started = time.monotonic()
    print(f"{plan}; wrk -t1 -c{CONNECTIONS}; one Hypercorn worker; {os.cpu_count()} CPUs")
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="bench-uow-") as tmp:
        work = Path(tmp)
        scripts = {
            "get": harness.write_script(work, "get", GET_LUA),
            "post": harness.write_script(work, "post", POST_LUA),
            "plain": harness.write_script(work, "plain", ""),
        }
        databases: list[tuple[str, str]] = []
        if args.db in ("sqlite", "all"):
            databases.append(("sqlite", f"sqlite+aiosqlite:///{work / 'bench.db'}"))
        if args.db in ("postgresql", "all"):
            databases.append(("postgresql", harness.postgres_url("uow")))
        for database, url in databases:
            try:
                results += bench_database(database, url, plan, work, scripts)
            except Exception as error:  # e.g. PostgreSQL unreachable: measure the rest
                print(f"\n{database}: skipped, {type(error).__name__}: {error}", flush=True)
        results += bench_nodb(plan, work, scripts)
    report(results, plan)
    print(f"\ntotal {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
