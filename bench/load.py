"""wrk bursts against the ledger, and two servers compared in alternating bursts.

Rules of measurement (the developers' guide): wall clock, as ratios within one
run; both servers up at once, loaded in turn by short bursts, the order flipping
every round so that a drift of the (shared, noisy) machine weighs on both; the
medians of the rounds compared, and the range of the per-round ratios printed as
the noise.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from bench.servers import Server

CONNECTIONS = 32
MODES = ("get", "deposit", "transfer")

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

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, '
    .. '"non_2xx": %d, "connect": %d, "read": %d, "write": %d, "timeout": %d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect, e.read, e.write, e.timeout))
end
"""

# The root cause's line of each traceback a server logs for a "database is locked" failure.
_LOCKED = re.compile(r"^sqlite3\.OperationalError: database is locked", re.M)


@dataclass(frozen=True)
class Plan:
    rounds: int
    seconds: int
    warmup_seconds: int


FULL = Plan(rounds=7, seconds=3, warmup_seconds=2)
QUICK = Plan(rounds=3, seconds=2, warmup_seconds=1)


def add_plan_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="3 rounds of 2 s (7 of 3 s)")
    parser.add_argument("--rounds", type=int, help="rounds per comparison")
    parser.add_argument("--seconds", type=int, help="seconds per burst")


def plan_from(args: argparse.Namespace) -> Plan:
    plan = QUICK if args.quick else FULL
    return Plan(args.rounds or plan.rounds, args.seconds or plan.seconds, plan.warmup_seconds)


@dataclass(frozen=True)
class Burst:
    """One wrk run: its throughput, latency percentiles and failures."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int
    locked: int
    """Failures with "database is locked", counted in the server's log."""
    problem: str | None = None

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def write_script(directory: Path) -> Path:
    path = directory / "ledger.lua"
    path.write_text(LUA)
    return path


def burst(
    server: Server,
    script: Path,
    mode: str,
    users: Path,
    seconds: int,
    *,
    connections: int = CONNECTIONS,
) -> Burst:
    """``wrk -t1 -c<connections>`` for ``seconds`` against ``server``."""
    offset = server.log_size()
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s"]
    command += ["-s", str(script), server.base + "/", "--", mode, str(users)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    locked = len(_LOCKED.findall(server.log_since(offset)))
    found = re.search(r"^WRK (\{.*\})$", done.stdout, re.M)
    if done.returncode != 0 or found is None:
        problem = f"wrk exited {done.returncode}: {done.stdout[-500:]} {done.stderr[-500:]}"
        return Burst(0, 0.0, 0.0, 0.0, 0, 0, locked, problem)
    figures = json.loads(found.group(1))
    errors = sum(figures[kind] for kind in ("connect", "read", "write", "timeout"))
    stalled = None if figures["requests"] else f"no request answered in {seconds} s"
    return Burst(
        requests=figures["requests"],
        seconds=figures["duration_us"] / 1e6,
        p50_ms=figures["p50_us"] / 1000,
        p99_ms=figures["p99_us"] / 1000,
        non_2xx=figures["non_2xx"],
        socket_errors=errors,
        locked=locked,
        problem=stalled,
    )


@dataclass(frozen=True)
class Side:
    """What one side of a comparison loads: a server, and the users it was seeded with."""

    label: str
    server: Server
    users: Path


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


@dataclass
class Comparison:
    database: str
    endpoint: str
    mode: str
    a_label: str
    b_label: str
    a: list[Burst] = field(default_factory=list)
    b: list[Burst] = field(default_factory=list)

    def rate(self, side: str) -> float:
        return _median([s.rate for s in self._side(side)])

    def p50(self, side: str) -> float:
        return _median([s.p50_ms for s in self._side(side)])

    def p99(self, side: str) -> float:
        return _median([s.p99_ms for s in self._side(side)])

    def failures(self, side: str) -> tuple[int, int, int]:
        """Over the rounds: non-2xx answers, socket errors, "database is locked" in the log."""
        bursts = self._side(side)
        return (
            sum(s.non_2xx for s in bursts),
            sum(s.socket_errors for s in bursts),
            sum(s.locked for s in bursts),
        )

    def _side(self, side: str) -> list[Burst]:
        return self.a if side == "a" else self.b

    @property
    def ratio(self) -> float:
        """Median req/s of A over median req/s of B."""
        base = self.rate("b")
        return self.rate("a") / base if base else 0.0

    @property
    def round_ratios(self) -> list[float]:
        return [x.rate / y.rate if y.rate else 0.0 for x, y in zip(self.a, self.b, strict=True)]

    @property
    def noise(self) -> str:
        ratios = self.round_ratios
        return f"{min(ratios):.2f}-{max(ratios):.2f}" if ratios else "n/a"

    @property
    def problems(self) -> list[str]:
        found = []
        for label, bursts in ((self.a_label, self.a), (self.b_label, self.b)):
            for s in bursts:
                if s.problem:
                    found.append(f"{label}: {s.problem}")
            non_2xx = sum(s.non_2xx for s in bursts)
            errors = sum(s.socket_errors for s in bursts)
            if non_2xx or errors:
                found.append(f"{label}: {non_2xx} non-2xx answers, {errors} socket errors")
        return found


def alternate(
    database: str, endpoint: str, mode: str, a: Side, b: Side, plan: Plan, script: Path
) -> Comparison:
    """Warm both up, then ``plan.rounds`` rounds of a burst each, the order flipping each round."""
    result = Comparison(database, endpoint, mode, a.label, b.label)
    print(f"\n{database} {endpoint}: A = {a.label}, B = {b.label}, wrk -c{CONNECTIONS}", flush=True)
    print(
        f"{'':10}{'A req/s':>9}{'B req/s':>9}{'A/B':>7}"
        f"{'A p50':>9}{'B p50':>8}{'A p99':>9}{'B p99':>8}  (ms)"
    )
    for side in (a, b):
        burst(side.server, script, mode, side.users, plan.warmup_seconds)
    for index in range(plan.rounds):
        order = [(a, result.a), (b, result.b)]
        if index % 2:
            order.reverse()
        for side, bursts in order:
            bursts.append(burst(side.server, script, mode, side.users, plan.seconds))
        x, y = result.a[-1], result.b[-1]
        print(
            f"  round {index + 1}:{x.rate:9.1f}{y.rate:9.1f}{result.round_ratios[-1]:7.2f}"
            f"{x.p50_ms:9.1f}{y.p50_ms:8.1f}{x.p99_ms:9.1f}{y.p99_ms:8.1f}",
            flush=True,
        )
    for problem in result.problems:
        print(f"  ! {problem}", flush=True)
    return result
