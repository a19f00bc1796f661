"""Issue 22: the service through PgBouncer, and with a read replica, against direct; same run.

A benchmark, not a timed test: it prints its figures and exits 0.

It makes a private primary with one streaming replica (``reliability.postgres``),
a private PgBouncer 1.18 in transaction mode in front of the primary
(``reliability.pgbouncer``) and a private Redis, migrates one database, and serves
the ledger three times, one Hypercorn worker each, all on that database:

- ``direct``: ``DATABASE_URL`` the primary;
- ``pgbouncer``: ``DATABASE_URL`` the PgBouncer, ``DATABASE_PGBOUNCER=true`` (every
  statement prepared in an exchange of its own, none cached);
- ``replica``: the primary, and ``DATABASE_REPLICA_URLS`` the replica (reads on the
  replica, a Redis GET per authenticated read for the caller's position, and after
  each committed write one round trip for the primary's WAL position and a Redis
  update).

Each server has users of its own, seeded through the API. wrk drives ``GET
/accounts/{id}`` and deposits, spread over the users, in alternating bursts: after a
warm-up, rounds of one burst a side, the order flipping each round. Printed: the
medians of req/s and p50/p99 per side, A/B, and the range of the per-round ratios
(the noise), and writes the table to ``docs/benchmarks/results/replicas.md``, which the
benchmarks page includes. Speed claims are these ratios, from one run.

Usage: ``python bench/replicas.py [--quick] [--rounds N] [--seconds S]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `bench` and `reliability` importable
    sys.path.insert(0, str(ROOT))

from bench.harness import (  # noqa: E402 - path set
    Server,
    markdown_table,
    stop_servers_on_sigterm,
    write_results,
)
from reliability.pgbouncer import PgBouncer, find_pgbouncer  # noqa: E402
from reliability.postgres import find_postgres_bin  # noqa: E402
from reliability.replication import replicated  # noqa: E402

CONNECTIONS = 16
USERS = 20
LUA = """\
-- wrk -s bench.lua URL -- MODE FILE: GET /accounts/<id> or a deposit, rotating over the users
local mode, users, i = nil, {}, 0
function init(args)
  mode = args[1]
  for line in io.lines(args[2]) do
    local token, account = line:match("^(%S+) (%d+)$")
    if token then users[#users + 1] = {"Bearer " .. token, account} end
  end
end
function request()
  local user = users[i % #users + 1]
  i = i + 1
  local headers = {Authorization = user[1], ["Content-Type"] = "application/json"}
  if mode == "get" then
    return wrk.format("GET", "/accounts/" .. user[2], headers)
  end
  return wrk.format("POST", "/accounts/" .. user[2] .. "/deposits", headers, '{"amount": 1}')
end
function done(summary, latency, requests)
  io.write(string.format('WRK {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, '
    .. '"errors": %d}\\n', summary.requests, summary.duration, latency:percentile(50),
    latency:percentile(99), summary.errors.status + summary.errors.connect
    + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""


@dataclass(frozen=True)
class Burst:
    rate: float
    p50_ms: float
    p99_ms: float
    errors: int


@dataclass
class Comparison:
    endpoint: str
    a_label: str
    b_label: str
    a: list[Burst] = field(default_factory=list)
    b: list[Burst] = field(default_factory=list)

    def median(self, side: list[Burst], what: str) -> float:
        return float(statistics.median(float(getattr(burst, what)) for burst in side))

    @property
    def ratios(self) -> list[float]:
        return [x.rate / y.rate if y.rate else 0.0 for x, y in zip(self.a, self.b, strict=True)]


@dataclass(frozen=True)
class Side:
    label: str
    server: Server
    users: Path


def _burst(side: Side, script: Path, mode: str, seconds: int) -> Burst:
    command = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--timeout", "10s"]
    command += ["-s", str(script), side.server.base + "/", "--", mode, str(side.users)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    found = re.search(r"^WRK (\{.*\})$", done.stdout, re.M)
    if found is None:
        print(f"  ! {side.label}: wrk said {done.stdout[-300:]} {done.stderr[-300:]}")
        return Burst(0.0, 0.0, 0.0, 1)
    figures = json.loads(found.group(1))
    return Burst(
        figures["requests"] / (figures["duration_us"] / 1e6),
        figures["p50_us"] / 1000,
        figures["p99_us"] / 1000,
        figures["errors"],
    )


def compare(
    endpoint: str, mode: str, a: Side, b: Side, rounds: int, seconds: int, script: Path
) -> Comparison:
    result = Comparison(endpoint, a.label, b.label)
    print(f"\n{endpoint}: A = {a.label}, B = {b.label}, wrk -c{CONNECTIONS}", flush=True)
    for side in (a, b):
        _burst(side, script, mode, 1)
    for number in range(rounds):
        order = [(a, result.a), (b, result.b)]
        if number % 2:
            order.reverse()
        for side, bursts in order:
            bursts.append(_burst(side, script, mode, seconds))
        x, y = result.a[-1], result.b[-1]
        print(
            f"  round {number + 1}: {x.rate:8.1f} {y.rate:8.1f}  {result.ratios[-1]:.2f}"
            f"   p50 {x.p50_ms:.1f}/{y.p50_ms:.1f} ms",
            flush=True,
        )
    return result


async def _seed(server: Server, path: Path, tag: str) -> Path:
    lines = []
    async with httpx.AsyncClient(base_url=server.base, timeout=30) as http:
        for number in range(USERS):
            email = f"bench{number}.{tag}@example.com"
            user = await http.post("/users", json={"name": f"b{number}", "email": email})
            user.raise_for_status()
            headers = {"Authorization": f"Bearer {user.json()['token']}"}
            account = await http.post(
                "/accounts", json={"name": "main", "currency": "USD"}, headers=headers
            )
            account.raise_for_status()
            lines.append(f"{user.json()['token']} {account.json()['id']}\n")
    await asyncio.to_thread(path.write_text, "".join(lines))
    return path


def _markdown(results: list[Comparison]) -> str:
    rows = []
    for r in results:
        a, b = r.median(r.a, "rate"), r.median(r.b, "rate")
        rows.append(
            [
                r.endpoint,
                f"{r.a_label} vs {r.b_label}",
                f"{a:,.0f}",
                f"{b:,.0f}",
                f"{a / b if b else 0.0:.3f}",
                f"{min(r.ratios):.2f}-{max(r.ratios):.2f}",
                f"{r.median(r.a, 'p50_ms'):.1f}",
                f"{r.median(r.b, 'p50_ms'):.1f}",
                f"{r.median(r.a, 'p99_ms'):.1f}",
                f"{r.median(r.b, 'p99_ms'):.1f}",
            ]
        )
    header = ["endpoint", "A vs B", "A req/s", "B req/s", "A / B", "per-round A / B"]
    header += ["A p50 ms", "B p50 ms", "A p99 ms", "B p99 ms"]
    return markdown_table(header, rows, left=2)


def _table(results: list[Comparison]) -> None:
    header = f"{'endpoint':<10}{'A vs B':<24}{'A req/s':>9}{'B req/s':>9}{'A/B':>7}"
    header += f"{'noise':>12}{'A p50':>8}{'B p50':>8}{'A p99':>8}{'B p99':>8}{'errors':>8}"
    print(f"\nmedians over the rounds (latencies in ms)\n{header}\n{'-' * len(header)}")
    for r in results:
        ratio = r.median(r.a, "rate") / r.median(r.b, "rate") if r.median(r.b, "rate") else 0.0
        noise = f"{min(r.ratios):.2f}-{max(r.ratios):.2f}"
        errors = sum(x.errors for x in r.a + r.b)
        print(
            f"{r.endpoint:<10}{r.a_label + ' vs ' + r.b_label:<24}"
            f"{r.median(r.a, 'rate'):>9.1f}{r.median(r.b, 'rate'):>9.1f}{ratio:>7.3f}{noise:>12}"
            f"{r.median(r.a, 'p50_ms'):>8.1f}{r.median(r.b, 'p50_ms'):>8.1f}"
            f"{r.median(r.a, 'p99_ms'):>8.1f}{r.median(r.b, 'p99_ms'):>8.1f}{errors:>8}"
        )


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwind, so that servers and clusters are stopped


async def _run(rounds: int, seconds: int, work: Path) -> list[Comparison]:
    bin_dir = find_postgres_bin()
    if bin_dir is None or find_pgbouncer() is None:
        print("PostgreSQL's server binaries or pgbouncer are missing (make pgbouncer); skipped")
        return []
    script = work / "bench.lua"
    script.write_text(LUA)
    results: list[Comparison] = []
    async with replicated(bin_dir) as cluster:
        bouncer = PgBouncer(cluster.primary.port)
        bouncer.start()
        quiet = {"ACCESS_LOG": "false"}
        plans = {
            "direct": {"DATABASE_URL": cluster.url, **quiet},
            "pgbouncer": {
                "DATABASE_URL": bouncer.url("replicated"),
                "DATABASE_PGBOUNCER": "true",
                **quiet,
            },
            "replica": {"DATABASE_URL": cluster.url, **cluster.env(), **quiet},
        }
        with ExitStack() as stack:
            stack.callback(bouncer.stop)
            sides: dict[str, Side] = {}
            for label, env in plans.items():
                server = Server(f"bench-{label}", "service.app:app", env, work)
                stack.callback(server.stop)
                await asyncio.to_thread(server.wait_ready, "/readyz")
                users = await _seed(server, work / f"{label}.users", label)
                sides[label] = Side(label, server, users)
            await asyncio.sleep(1)  # the seeds replayed and polled
            for other in ("pgbouncer", "replica"):
                for endpoint, mode in (("GET", "get"), ("deposit", "deposit")):
                    results.append(
                        await asyncio.to_thread(
                            compare,
                            endpoint,
                            mode,
                            sides[other],
                            sides["direct"],
                            rounds,
                            seconds,
                            script,
                        )
                    )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="3 rounds of 2 s (7 of 3 s)")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--seconds", type=int)
    args = parser.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 7)
    seconds = args.seconds or (2 if args.quick else 3)
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk); nothing measured")
        return 0
    stop_servers_on_sigterm()
    started = time.monotonic()
    print(f"{rounds} rounds of {seconds}s a side; wrk -t1 -c{CONNECTIONS}; one Hypercorn worker")
    with tempfile.TemporaryDirectory(prefix="bench-replicas-") as tmp:
        results = asyncio.run(_run(rounds, seconds, Path(tmp)))
    if results:
        _table(results)
        how = (
            f"Medians of {rounds} alternating rounds of {seconds} s a side, wrk -c{CONNECTIONS}, "
            "one Hypercorn worker a server, on a private primary, replica, PgBouncer and Redis."
        )
        write_results("replicas", how, _markdown(results), quick=args.quick)
    print(f"\ntotal {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
