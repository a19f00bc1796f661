"""Issue 12: the ledger, this checkout (head) against the base commit, on PostgreSQL and SQLite.

A benchmark, not a timed test: it prints its figures and verdicts, and exits 0.

Head and base (a clone at ``146505f``, ``--base`` to change it) are served side
by side by this interpreter, one Hypercorn worker each, each on a database of
its own migrated by its own checkout and seeded through the HTTP API with the
same 50 users of 2 funded accounts (``bench/checkouts.py``, ``bench/seed.py``).
wrk (32 connections) drives ``GET /accounts/{id}``, deposits and transfers
between a user's own accounts, spread over the users, in alternating bursts
(``bench/load.py``: after a warm-up, 7 rounds of 3 s a side, the order flipping
each round; ``--quick``: 3 rounds of 2 s). Printed: medians of req/s, p50 and
p99 per side, head/base, and the range of the per-round ratios (the noise).

On PostgreSQL, also:

- the ceiling: pgbench running the base's deposit SQL with 32 clients on the
  base's database (``bench/pgbench.py``), and the head's deposit as a share of it;
- round trips per request, head and base, from ``bench/roundtrips.py`` (its
  event counter, and the proxy's count on the wire);
- the peer (``bench/peer_app.py``, FastAPI + advanced-alchemy, on the base's
  database) against the head, on the read and the deposit (``--no-peer`` skips it).

Targets (issue 12): PostgreSQL at least 2.0x the base on all three, and the
deposit at least 15% of pgbench; SQLite at least 1.5x on all three, with the
writes' p99 at most 300 ms. ``--control`` serves the base on both sides (two
clones): its ratios are this machine's noise floor, and it prints no verdicts.

PostgreSQL: the server of ``BENCH_POSTGRES_URL`` (``.../bench`` by default), in the
databases ``bench_compare_head`` and ``bench_compare_base``, dropped afterwards.

Usage: ``python bench/compare.py [--quick] [--rounds N] [--seconds S] [--db sqlite|postgresql|all]
[--control] [--no-peer]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `bench` importable
    sys.path.insert(0, str(ROOT))

from bench import checkouts, load, pgbench  # noqa: E402 - importable once the path is set
from bench.checkouts import BASE_COMMIT, Checkout  # noqa: E402
from bench.load import Comparison, Plan, Side  # noqa: E402
from bench.seed import Customer  # noqa: E402
from bench.servers import Server  # noqa: E402

REQUESTS = [("GET /accounts/{id}", "get"), ("deposit", "deposit"), ("transfer", "transfer")]
PEER_REQUESTS = REQUESTS[:2]
TARGET = {"PostgreSQL": 2.0, "SQLite": 1.5}
SQLITE_WRITE_P99_MS = 300.0
PGBENCH_SHARE = 0.15


@dataclass
class Run:
    head: Checkout
    base: Checkout
    plan: Plan
    work: Path
    script: Path
    control: bool
    comparisons: list[Comparison] = field(default_factory=list)
    peer: list[Comparison] = field(default_factory=list)
    pgbench_tps: list[float] = field(default_factory=list)
    round_trips: dict[str, dict[str, Any]] = field(default_factory=dict)
    base_customers: list[Customer] = field(default_factory=list)
    """As seeded on the base's database: for pgbench and the peer."""
    skipped: list[str] = field(default_factory=list)


def _serve_both(
    run: Run, database: str, urls: dict[str, str], stack: ExitStack
) -> tuple[Side, Side]:
    pair = checkouts.serve_pair(run.head, run.base, database, urls, run.work, stack)
    run.base_customers = pair.base_customers
    return pair.head, pair.base


def _round_trips(checkout: Checkout, url: str, *options: str) -> dict[str, Any]:
    """``bench/roundtrips.py`` run on the checkout's ``service``, in-process, on its database."""
    env = {**os.environ, **checkouts.SERVER_ENV, "PYTHONPATH": str(checkout.root)}
    script = ROOT / "bench" / "roundtrips.py"
    done = subprocess.run(
        [sys.executable, str(script), "--url", url, *options],
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


def bench_postgresql(run: Run, peer: bool) -> None:
    urls = {c.label: checkouts.postgres_url(f"compare_{c.label}") for c in (run.head, run.base)}
    for url in urls.values():
        asyncio.run(checkouts.recreate_postgres_database(url))
    try:
        with ExitStack() as stack:
            head, base = _serve_both(run, "postgresql", urls, stack)
            for endpoint, mode in REQUESTS:
                run.comparisons.append(
                    load.alternate("PostgreSQL", endpoint, mode, head, base, run.plan, run.script)
                )
            print("\nround trips per request (in-process, through a counting proxy)", flush=True)
            for checkout in (run.head, run.base):
                run.round_trips[checkout.label] = _round_trips(checkout, urls[checkout.label])
            base_url = urls[run.base.label]
            if peer and not run.control:
                customer = run.base_customers[0]
                run.round_trips["peer"] = _round_trips(
                    checkouts.this_checkout(),  # bench/peer_app.py is this checkout's
                    base_url,
                    *("--peer", "--token", customer.token, "--account", str(customer.accounts[0])),
                )
            owners = asyncio.run(pgbench.account_owners(base_url))
            scripts = pgbench.write_scripts(owners, run.base_customers, run.work / "pgbench")
            print(f"\npgbench, the base's deposit SQL, -c{pgbench.CLIENTS}:", end="", flush=True)
            pgbench.run(base_url, scripts, run.plan.warmup_seconds)
            for _ in range(3):
                run.pgbench_tps.append(pgbench.run(base_url, scripts, run.plan.seconds + 2))
                print(f" {run.pgbench_tps[-1]:.0f} tps", end="", flush=True)
            print()
            if peer and not run.control:
                base.server.stop()
                server = Server(
                    "peer-postgresql", "bench.peer_app:app", {"DATABASE_URL": base_url}, run.work
                )
                stack.callback(server.stop)
                server.wait_ready("/healthz", timeout=60)
                peer_side = Side("peer", server, base.users)
                for endpoint, mode in PEER_REQUESTS:
                    run.peer.append(
                        load.alternate(
                            "PostgreSQL", endpoint, mode, head, peer_side, run.plan, run.script
                        )
                    )
    finally:
        for url in urls.values():
            asyncio.run(checkouts.drop_postgres_database(url))


def bench_sqlite(run: Run) -> None:
    urls = {
        c.label: f"sqlite+aiosqlite:///{run.work / f'sqlite-{c.label}' / 'ledger.db'}"
        for c in (run.head, run.base)
    }
    with ExitStack() as stack:
        head, base = _serve_both(run, "sqlite", urls, stack)
        for endpoint, mode in REQUESTS:
            run.comparisons.append(
                load.alternate("SQLite", endpoint, mode, head, base, run.plan, run.script)
            )


# --- the report -----------------------------------------------------------------------------


def _verdict(run: Run, c: Comparison) -> tuple[str, str]:
    target = TARGET[c.database]
    wanted = f">= {target:.1f}x"
    met = c.ratio >= target
    if c.database == "SQLite" and c.endpoint != REQUESTS[0][0]:
        wanted += f", p99 <= {SQLITE_WRITE_P99_MS:.0f} ms"
        met = met and c.p99("a") <= SQLITE_WRITE_P99_MS
    if c.problems:
        return wanted, "INVALID"
    if run.control:
        return wanted, "(control)"
    return wanted, "PASS" if met else "FAIL"


def _table(run: Run, comparisons: list[Comparison], verdicts: bool) -> None:
    if not comparisons:
        return
    a, b = comparisons[0].a_label, comparisons[0].b_label
    header = (
        f"{'database':<12}{'request':<20}{a + ' req/s':>11}{b + ' req/s':>12}{a + '/' + b:>11}"
        f"  {'per round':<11}{a + ' p50':>10}{b + ' p50':>10}{a + ' p99':>10}{b + ' p99':>10}"
    )
    if verdicts:
        header += f"  {'target':<24}verdict"
    print(header)
    print("-" * len(header))
    for c in comparisons:
        line = (
            f"{c.database:<12}{c.endpoint:<20}{c.rate('a'):>11.1f}{c.rate('b'):>12.1f}"
            f"{c.ratio:>10.2f}x  {c.noise:<11}{c.p50('a'):>10.1f}{c.p50('b'):>10.1f}"
            f"{c.p99('a'):>10.1f}{c.p99('b'):>10.1f}"
        )
        if verdicts:
            wanted, verdict = _verdict(run, c)
            line += f"  {wanted:<24}{verdict}"
        print(line)
    print("(req/s, p50 and p99: medians over the rounds; latencies in ms; per round: the range")
    print(" of the per-round ratios of req/s, this run's noise)")
    for c in comparisons:
        for problem in c.problems:
            print(f"! {c.database} {c.endpoint}: {problem}")


def _report_pgbench(run: Run) -> None:
    if not run.pgbench_tps:
        return
    ceiling = statistics.median(run.pgbench_tps)
    rounds = ", ".join(f"{tps:.0f}" for tps in run.pgbench_tps)
    print(f"\n== the ceiling: pgbench with the base's deposit SQL, {pgbench.CLIENTS} clients")
    print(f"tps {ceiling:.0f} (median of {rounds})")
    deposits = [c for c in run.comparisons if c.database == "PostgreSQL" and c.mode == "deposit"]
    for c in deposits:
        for side, label in (("a", c.a_label), ("b", c.b_label)):
            share = c.rate(side) / ceiling
            verdict = ""
            if side == "a" and not run.control:
                met = "PASS" if share >= PGBENCH_SHARE else "FAIL"
                verdict = f"  target >= {PGBENCH_SHARE:.0%}: {met}"
            print(f"{label} deposit {c.rate(side):.0f} req/s = {share:.1%} of pgbench{verdict}")


def _report_round_trips(run: Run) -> None:
    if not run.round_trips:
        return
    targets = {"GET /accounts/{id}": 3, "deposit": 5}
    labels = list(run.round_trips)
    print("\n== round trips per request, PostgreSQL: a pooled connection that served it before")
    header = f"{'request':<20}"
    header += "".join(f"{label + ' events':>14}{label + ' wire':>12}" for label in labels)
    print(header + f"  {'target':<8}verdict")
    print("-" * (len(header) + 16))
    mismatches = []
    for name in REQUESTS:
        request = name[0]
        line = f"{request:<20}"
        for label in labels:
            counted = run.round_trips[label]["requests"].get(request)
            if counted is None:  # the peer has no transfer
                line += f"{'-':>14}{'-':>12}"
                continue
            events, wire = statistics.median(counted["events"]), statistics.median(counted["wire"])
            line += f"{events:>14.0f}{wire:>12.0f}"
            if counted["events"] != counted["wire"]:
                mismatches.append(f"{label} {request}: {counted['events']} vs {counted['wire']}")
        target = targets.get(request)
        if target is None:
            line += f"  {'-':<8}"
        else:
            head = statistics.median(run.round_trips[labels[0]]["requests"][request]["wire"])
            verdict = "(control)" if run.control else ("PASS" if head <= target else "FAIL")
            line += f"  {'<= ' + str(target):<8}{verdict}"
        print(line)
    print("(events: bench/roundtrips.py's counter, as tests/test_round_trips.py uses it; wire: the")
    print(" client's sends after an answer, counted by a proxy; medians of 5 requests after 3)")
    for mismatch in mismatches:
        print(f"! the event counter and the wire disagree: {mismatch}")
    for label in labels:
        for request in ("deposit",):
            print(f"\n{label}'s {request}, {run.round_trips[label]['origin']}:")
            print(run.round_trips[label]["requests"][request]["log"])


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwind, so that the servers are stopped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    load.add_plan_options(parser)
    parser.add_argument("--db", choices=["sqlite", "postgresql", "all"], default="all")
    parser.add_argument("--base", default=BASE_COMMIT, help=f"the base commit ({BASE_COMMIT})")
    parser.add_argument("--control", action="store_true", help="the base on both sides")
    parser.add_argument("--no-peer", action="store_true", help="skip FastAPI + advanced-alchemy")
    args = parser.parse_args(argv)
    for tool in ("wrk", "pgbench", "git"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed; nothing measured")
            return 0
    signal.signal(signal.SIGTERM, _on_sigterm)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp:
        work = Path(tmp)
        base = checkouts.clone_at(args.base, work / "base", "base")
        head = checkouts.this_checkout()
        if args.control:
            head = checkouts.clone_at(args.base, work / "base2", "base2")
        plan = load.plan_from(args)
        run = Run(head, base, plan, work, load.write_script(work), args.control)
        print(f"head: {head}\nbase: {base}")
        print(
            f"{plan.rounds} rounds of {plan.seconds} s a side after a {plan.warmup_seconds} s "
            f"warm-up; one Hypercorn worker each; {os.cpu_count()} CPUs"
        )
        sections: list[tuple[str, Callable[[], None]]] = []
        if args.db in ("postgresql", "all"):
            sections.append(("PostgreSQL", lambda: bench_postgresql(run, not args.no_peer)))
        if args.db in ("sqlite", "all"):
            sections.append(("SQLite", lambda: bench_sqlite(run)))
        for name, section in sections:
            try:
                section()
            except Exception as error:  # e.g. PostgreSQL unreachable: measure the rest
                run.skipped.append(f"{name}: {type(error).__name__}: {error}")
                print(f"\n{name}: skipped, {run.skipped[-1]}", flush=True)
        print(f"\n== {head.label} vs {base.label}: wrk -c32, one Hypercorn worker each")
        _table(run, run.comparisons, verdicts=True)
        _report_pgbench(run)
        _report_round_trips(run)
        if run.peer:
            print(f"\n== {head.label} vs the peer (FastAPI + advanced-alchemy, bench/peer_app.py)")
            _table(run, run.peer, verdicts=False)
        for skipped in run.skipped:
            print(f"\nskipped: {skipped}")
    print(f"\ntotal {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
