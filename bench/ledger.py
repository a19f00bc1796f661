"""The ledger, this tree against a base commit, in the same run, on PostgreSQL and SQLite.

A benchmark, not a timed test: it prints its table, writes it to
``docs/benchmarks/results/ledger.md``, and exits 0.

The base (``--base``, by default ``e05891a``, issue 21's) is checked out into a
temporary clone; this tree (head, uncommitted changes included) and the base are
served side by side by this interpreter, one Hypercorn worker each, each on a
database of its own migrated by its own checkout and seeded through the HTTP API
with the same 50 users of 2 funded accounts (``bench/checkouts.py``,
``bench/seed.py``). A second head server on a database of its own (head A/A) is
in the same rotation: its ratio to head is the run's noise (``--no-control``
leaves it out). wrk (``-t1 -c32``) drives ``GET /accounts/{id}``, deposits, and
transfers between a user's own accounts, spread over the users, in bursts
rotating between the servers, the order reversed every other round
(``bench/harness/rounds.py``): after a warm-up, the medians of 5 rounds of 3 s
(``--quick``: 2 rounds of 1 s). Printed and written: req/s, p50 and p99 per side,
head/base with the range of its per-round ratios, and the target (``--target``,
issue 21's 1.5x).

On PostgreSQL also the round trips each request makes, head and base, counted by
``bench/roundtrips.py`` (its event counter, checked on the wire by a proxy).

PostgreSQL: the server of ``BENCH_POSTGRES_URL`` (``.../bench`` by default), in the
databases ``<its name>_ledger_head``, ``..._ledger_base`` and ``..._ledger_control``,
dropped afterwards.

Usage: ``python bench/ledger.py [--quick] [--rounds N] [--seconds S] [--db sqlite|postgresql|all]
[--base COMMIT] [--target X] [--no-control]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `bench` importable
    sys.path.insert(0, str(ROOT))

from bench import checkouts, harness  # noqa: E402 - importable once the path is set
from bench.checkouts import BASE_COMMIT, Checkout  # noqa: E402
from bench.harness import Plan, Rotation, Server, Target, markdown_table  # noqa: E402
from bench.seed import seed, write_customers  # noqa: E402

FULL = Plan(rounds=5, seconds=3, warmup_seconds=2)
QUICK = Plan(rounds=2, seconds=1, warmup_seconds=1, quick=True)
REQUESTS = [("GET /accounts/{id}", "get"), ("deposit", "deposit"), ("transfer", "transfer")]
TARGET = 1.5
"""Issue 21: each request at least 1.5x the base's."""

LUA = """\
-- The ledger's requests, rotating through the users of a file (`token account account` a line):
--   wrk -s ledger.lua URL -- MODE FILE        MODE: get, deposit or transfer
-- Every other lap over the users takes each user's other account (and the other direction).
local mode, users, count
local i = 0

function init(args)
  mode = args[1]
  users = {}
  for line in io.lines(args[2]) do
    local token, a, b = line:match("^(%S+) (%d+) (%d+)$")
    if token then users[#users + 1] = {"Bearer " .. token, a, b} end
  end
  count = #users
  if count == 0 then error("no users in " .. args[2]) end
end

function request()
  local user = users[i % count + 1]
  local mine, other = user[2], user[3]
  if math.floor(i / count) % 2 == 1 then mine, other = other, mine end
  i = i + 1
  local headers = {Authorization = user[1], ["Content-Type"] = "application/json"}
  if mode == "get" then
    return wrk.format("GET", "/accounts/" .. mine, headers)
  elseif mode == "deposit" then
    return wrk.format("POST", "/accounts/" .. mine .. "/deposits", headers,
      '{"amount": 100, "description": "bench"}')
  elseif mode == "transfer" then
    return wrk.format("POST", "/transfers", headers, string.format(
      '{"from_account_id": %s, "to_account_id": %s, "amount": 1, "description": "bench"}',
      mine, other))
  end
  error("unknown mode " .. tostring(mode))
end
"""


@dataclass(frozen=True)
class Side:
    """One server of the rotation: a checkout, served on a database of its own."""

    label: str
    checkout: Checkout
    key: str
    """Names its database and its log."""


@dataclass
class Run:
    sides: list[Side]
    plan: Plan
    work: Path
    script: Path
    rotations: dict[tuple[str, str], Rotation] = field(default_factory=dict)
    round_trips: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


def _serve(run: Run, database: str, urls: dict[str, str], stack: ExitStack) -> list[Target]:
    """Each side migrated by its checkout, served, and seeded alike: its targets for wrk."""
    servers: list[Server] = []
    for side in run.sides:
        harness.migrate(urls[side.key], side.checkout.root)
        server = checkouts.serve(side.checkout, f"{side.key}-{database}", urls[side.key], run.work)
        stack.callback(server.stop)
        servers.append(server)
    made = asyncio.run(seed([server.base for server in servers]))
    targets = []
    for side, server, customers in zip(run.sides, servers, made, strict=True):
        users = write_customers(customers, run.work / f"users-{side.key}-{database}.txt")
        targets.append(Target(side.label, server, "/", run.script, ("MODE", str(users))))
    return targets


def _round_trips(checkout: Checkout, url: str) -> dict[str, Any]:
    """``bench/roundtrips.py`` run on the checkout's ``service``, in-process, on its database."""
    env = {**os.environ, **checkouts.SERVER_ENV, "PYTHONPATH": str(checkout.root)}
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "roundtrips.py"), "--url", url],
        cwd=checkout.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    for line in done.stdout.splitlines():
        if line.startswith("ROUNDTRIPS "):
            result: dict[str, Any] = json.loads(line.removeprefix("ROUNDTRIPS "))
            return result
    raise RuntimeError(f"round trips of {checkout}: {done.stdout[-1000:]}{done.stderr[-3000:]}")


def bench_database(run: Run, database: str) -> None:
    if database == "SQLite":
        urls = {
            s.key: f"sqlite+aiosqlite:///{run.work / f'sqlite-{s.key}' / 'ledger.db'}"
            for s in run.sides
        }
    else:
        urls = {s.key: harness.postgres_url(f"ledger_{s.key}") for s in run.sides}
        for url in urls.values():
            asyncio.run(harness.recreate_postgres_database(url))
    try:
        with ExitStack() as stack:
            targets = _serve(run, database.lower(), urls, stack)
            for request, mode in REQUESTS:
                moded = [
                    Target(t.label, t.server, t.path, t.script, (mode, t.args[1])) for t in targets
                ]
                run.rotations[(database, request)] = harness.rotate(
                    f"{database} {request}", moded, run.plan
                )
        if database == "PostgreSQL":
            print("\nround trips per request (in-process, through a counting proxy)", flush=True)
            for side in run.sides[:2]:
                run.round_trips[side.label] = _round_trips(side.checkout, urls[side.key])
    finally:
        if database == "PostgreSQL":
            for url in urls.values():
                asyncio.run(harness.drop_postgres_database(url))


# --- the report -----------------------------------------------------------------------------


def _figures(run: Run, target: float) -> str:
    head, base = run.sides[0].label, run.sides[1].label
    control = run.sides[2].label if len(run.sides) > 2 else None
    header = ["request", f"{head} req/s", f"{base} req/s", f"{head} / {base}"]
    header += [f"{head} p50 / p99", f"{base} p50 / p99"]
    if control:
        header.append(f"{head} / {control}")
    header += ["target", "verdict"]
    rows = []
    for (database, request), r in run.rotations.items():
        row: list[object] = [f"{database} `{request}`", f"{r.rate(head):,.0f}"]
        row += [f"{r.rate(base):,.0f}", f"{r.ratio(head, base):.2f}x ({r.noise(head, base)})"]
        row += [
            f"{r.p50(head):,.0f} / {r.p99(head):,.0f}",
            f"{r.p50(base):,.0f} / {r.p99(base):,.0f}",
        ]
        if control:
            row.append(f"{r.ratio(head, control):.2f}x ({r.noise(head, control)})")
        met = r.ratio(head, base) >= target and not r.problems
        row += [f">= {target:.1f}x", "met" if met else "**not met**"]
        rows.append(row)
    return markdown_table(header, rows)


def _round_trips_table(run: Run) -> str:
    labels = list(run.round_trips)
    header = ["request", *(f"{label} round trips" for label in labels)]
    rows = []
    mismatches = []
    for request, _ in REQUESTS:
        row: list[object] = [f"`{request}`"]
        for label in labels:
            counted = run.round_trips[label]["requests"][request]
            row.append(f"{statistics.median(counted['wire']):.0f}")
            if counted["events"] != counted["wire"]:
                mismatches.append(f"{label} {request}: {counted['events']} vs {counted['wire']}")
        rows.append(row)
    notes = [f"- the event counter and the wire disagree: {m}" for m in mismatches]
    return "\n".join([markdown_table(header, rows), *notes])


def report(run: Run, target: float) -> None:
    head, base = run.sides[0], run.sides[1]
    sections = [
        f"{head.label}: {head.checkout.commit}; {base.label}: {base.checkout.commit}. Requests per "
        "second, medians over the rounds; p50 and p99 in ms; in brackets the range of the "
        "per-round ratios."
        + (
            f" {run.sides[2].label} is a second head server: its column is the noise."
            if len(run.sides) > 2
            else ""
        ),
        _figures(run, target),
    ]
    if run.round_trips:
        sections += [
            "Round trips to PostgreSQL per request, on a pooled connection that has served the "
            "request before (`bench/roundtrips.py`: its event counter, checked on the wire):",
            _round_trips_table(run),
        ]
    problems = [p for r in run.rotations.values() for p in r.problems]
    problems += [f"skipped: {s}" for s in run.skipped]
    if problems:
        sections += ["Problems:", "\n".join(f"- {p}" for p in problems)]
    how = (
        "`GET /accounts/{id}`, deposits and transfers, this tree against a base commit, each "
        "served by one Hypercorn worker on a database of its own seeded alike; `wrk -t1 -c32` "
        f"bursts rotating between the servers, the order reversed every other round: {run.plan}."
    )
    harness.write_results(
        "ledger",
        how,
        "\n\n".join(sections),
        quick=run.plan.quick,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    harness.add_plan_options(parser, FULL, QUICK)
    parser.add_argument("--db", choices=["sqlite", "postgresql", "all"], default="all")
    parser.add_argument("--base", default=BASE_COMMIT, help=f"the base commit ({BASE_COMMIT})")
    parser.add_argument("--target", type=float, default=TARGET, help=f"head/base ({TARGET})")
    parser.add_argument("--no-control", action="store_true", help="no second head server")
    args = parser.parse_args(argv)
    for tool in ("wrk", "git"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed; nothing measured")
            return 0
    harness.stop_servers_on_sigterm()
    started = time.monotonic()
    plan = harness.plan_from(args, FULL, QUICK)
    with tempfile.TemporaryDirectory(prefix="bench-ledger-") as tmp:
        work = Path(tmp)
        head = checkouts.this_checkout()
        base = checkouts.clone_at(args.base, work / "base", "base")
        sides = [Side("head", head, "head"), Side("base", base, "base")]
        if not args.no_control:
            sides.append(Side("head A/A", head, "control"))
        run = Run(sides, plan, work, harness.write_script(work, "ledger", LUA))
        print(f"head: {head}\nbase: {base}\n{plan}; one Hypercorn worker each")
        databases = {"postgresql": ["PostgreSQL"], "sqlite": ["SQLite"]}
        for database in databases.get(args.db, ["PostgreSQL", "SQLite"]):
            try:
                bench_database(run, database)
            except Exception as error:  # e.g. PostgreSQL unreachable: measure the rest
                run.skipped.append(f"{database}: {type(error).__name__}: {error}")
                print(f"\n{database}: skipped, {run.skipped[-1]}", flush=True)
        report(run, args.target)
    print(f"\ntotal {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
