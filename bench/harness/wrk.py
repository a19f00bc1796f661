"""One wrk burst against one server: throughput, latency percentiles, failures, server CPU.

Every script is a Lua body of the benchmark's own (what to request) followed by
``REPORT``, which makes wrk print its figures as one JSON line.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.harness.servers import Server

__all__ = ["CONNECTIONS", "REPORT", "Burst", "burst", "write_script"]

CONNECTIONS = 32

REPORT = """
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, '
    .. '"non_2xx": %d, "connect": %d, "read": %d, "write": %d, "timeout": %d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect, e.read, e.write, e.timeout))
end
"""

# The root cause's line of each traceback a server logs for a "database is locked" failure.
_LOCKED = re.compile(r"^(sqlite3\.)?OperationalError: database is locked", re.M)


def write_script(directory: Path, name: str, body: str) -> Path:
    """``body`` (the requests) and ``REPORT``, as ``<directory>/<name>.lua``."""
    path = directory / f"{name}.lua"
    path.write_text(body + REPORT)
    return path


@dataclass(frozen=True)
class Burst:
    """One wrk run: its throughput, latency percentiles, failures and the server's CPU time."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int
    locked: int
    """Failures with "database is locked", counted in the server's log."""
    cpu_seconds: float | None = None
    problem: str | None = None

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def cpu_rate(self) -> float | None:
        """Requests per CPU-second of the server: less sensitive to neighbours than req/s."""
        return self.requests / self.cpu_seconds if self.cpu_seconds else None


def burst(
    server: Server,
    path: str,
    seconds: float,
    script: Path,
    args: tuple[str, ...] = (),
    *,
    connections: int = CONNECTIONS,
) -> Burst:
    """``wrk -t1 -c<connections>`` for ``seconds`` against ``server``'s ``path``."""
    offset = server.log_size()
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s"]
    command += ["-s", str(script), server.base + path]
    if args:
        command += ["--", *args]
    cpu_before = server.cpu_seconds()
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    cpu_after = server.cpu_seconds()
    cpu = None
    if cpu_before is not None and cpu_after is not None and cpu_after > cpu_before:
        cpu = cpu_after - cpu_before
    locked = len(_LOCKED.findall(server.log_since(offset)))
    found = re.search(r"^WRK (\{.*\})$", done.stdout, re.M)
    if done.returncode != 0 or found is None:
        problem = f"wrk exited {done.returncode}: {done.stdout[-500:]} {done.stderr[-500:]}"
        return Burst(0, 0.0, 0.0, 0.0, 0, 0, locked, cpu, problem)
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
        cpu_seconds=cpu,
        problem=stalled,
    )
