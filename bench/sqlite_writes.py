"""Issue 11: SQLite deposits at 1 and 2 Hypercorn workers, 32 connections, head against the base.

A benchmark, not a timed test: it prints its figures and verdicts, and exits 0.

Head and base (a clone at ``146505f``) are served side by side, each on a SQLite
file of its own, migrated by its own checkout and seeded through the HTTP API
(``bench/checkouts.py``: 50 users with 2 funded accounts). wrk with 32
connections sends deposits spread over the users, in alternating bursts
(``bench/load.py``: after a warm-up, 7 rounds of 3 s a side, the order flipping
each round; ``--quick``: 3 rounds of 2 s); first with one worker each, then
the same files served with two workers each.

Printed per side and worker count: req/s, p50, p99 and p99/p50 (medians over
the rounds), the "database is locked" failures (the tracebacks in the server's
log, summed over the rounds) and the non-2xx answers and socket errors (wrk).

Targets (issue 11), for the head: at 1 worker p99 at most 3x p50; at 2 workers
no "database is locked" at all. ``--control`` serves the base on both sides.

Usage: ``python bench/sqlite_writes.py [--quick] [--rounds N] [--seconds S] [--control]
[--workers 1,2]``
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `bench` importable
    sys.path.insert(0, str(ROOT))

from bench import checkouts, load  # noqa: E402 - importable once the path is set
from bench.checkouts import BASE_COMMIT, Pair  # noqa: E402
from bench.load import Comparison  # noqa: E402

TAIL_RATIO = 3.0


def _row(workers: int, c: Comparison, side: str, label: str, control: bool) -> str:
    p50, p99 = c.p50(side), c.p99(side)
    tail = p99 / p50 if p50 else 0.0
    non_2xx, errors, locked = c.failures(side)
    verdict = ""
    if side == "a":
        if control:
            verdict = "(control)"
        elif workers == 1:
            verdict = f"p99/p50 <= {TAIL_RATIO:.0f}: {'PASS' if tail <= TAIL_RATIO else 'FAIL'}"
        else:
            verdict = f"no locked: {'PASS' if locked == 0 else 'FAIL'}"
    return (
        f"{workers:>7}  {label:<6}{c.rate(side):>8.1f}{p50:>9.1f}{p99:>9.1f}{tail:>9.1f}"
        f"{locked:>8}{non_2xx:>9}{errors:>8}  {verdict}"
    )


def report(results: list[tuple[int, Comparison]], control: bool) -> None:
    print("\n== SQLite deposits, wrk -c32: head vs base, alternating bursts")
    header = (
        f"{'workers':>7}  {'side':<6}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'p99/p50':>9}"
        f"{'locked':>8}{'non-2xx':>9}{'socket':>8}  target"
    )
    print(header)
    print("-" * (len(header) + 22))
    for workers, c in results:
        print(_row(workers, c, "a", c.a_label, control))
        print(_row(workers, c, "b", c.b_label, control))
        print(f"{'':9}{c.a_label}/{c.b_label} req/s {c.ratio:.2f}x, per round {c.noise}")
    print('(req/s, p50, p99: medians over the rounds; locked: "database is locked" tracebacks')
    print(" in the server's log; non-2xx and socket errors: wrk's; all three summed over rounds)")


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwind, so that the servers are stopped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    load.add_plan_options(parser)
    parser.add_argument("--base", default=BASE_COMMIT, help=f"the base commit ({BASE_COMMIT})")
    parser.add_argument("--control", action="store_true", help="the base on both sides")
    parser.add_argument("--workers", default="1,2", help="worker counts, in order (1,2)")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed; nothing measured")
        return 0
    signal.signal(signal.SIGTERM, _on_sigterm)
    started = time.monotonic()
    plan = load.plan_from(args)
    results: list[tuple[int, Comparison]] = []
    skipped: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-sqlite-writes-") as tmp:
        work = Path(tmp)
        base = checkouts.clone_at(args.base, work / "base", "base")
        head = checkouts.this_checkout()
        if args.control:
            head = checkouts.clone_at(args.base, work / "base2", "base2")
        print(f"head: {head}\nbase: {base}")
        rounds = f"{plan.rounds} rounds of {plan.seconds} s a side"
        print(f"{rounds} after a {plan.warmup_seconds} s warm-up")
        script = load.write_script(work)
        urls = {
            c.label: f"sqlite+aiosqlite:///{work / f'sqlite-{c.label}' / 'ledger.db'}"
            for c in (head, base)
        }
        seeded: Pair | None = None
        for workers in (int(n) for n in args.workers.split(",")):
            try:
                with ExitStack() as stack:
                    pair = checkouts.serve_pair(
                        head, base, "sqlite", urls, work, stack, workers=workers, seeded=seeded
                    )
                    seeded = pair
                    endpoint = f"deposit, {workers} worker(s)"
                    comparison = load.alternate(
                        "SQLite", endpoint, "deposit", pair.head, pair.base, plan, script
                    )
                    results.append((workers, comparison))
            except Exception as error:  # measure the rest, and say what went wrong
                skipped.append(f"{workers} worker(s): {type(error).__name__}: {error}")
                print(f"\nskipped {skipped[-1]}", flush=True)
        report(results, args.control)
        for reason in skipped:
            print(f"\nskipped: {reason}")
    print(f"\ntotal {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
