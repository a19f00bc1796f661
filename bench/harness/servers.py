"""Servers for the benchmarks and the reliability suite: Hypercorn (or any command line)
started on a free port, signalled and stopped as a group."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import IO

ROOT = Path(__file__).resolve().parent.parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _hypercorn() -> str:
    beside = Path(sys.executable).parent / "hypercorn"
    if beside.exists():
        return str(beside)
    found = shutil.which("hypercorn")
    if found is None:
        raise SystemExit("hypercorn not found; run `make install` first")
    return found


class Server:
    """One Hypercorn process with ``workers`` workers, serving ``target`` on a free port.

    ``target`` is Hypercorn's (``module:app``), or a whole command line of another
    server, whose ``{port}`` is replaced by the free port (gunicorn, in the
    five-stack benchmark); ``workers`` and ``options`` are then Hypercorn's, unused.

    Hypercorn runs its workers in child processes; all are in a session (and a
    process group) of their own, so they are signalled, stopped, and their CPU
    time read, together. ``options`` are more Hypercorn command-line options.

    ``root`` is the checkout served: the server runs in it with it on
    ``PYTHONPATH``, so ``service`` is that checkout's (another commit's clone, served
    by this interpreter and its packages). ``pythonpath`` goes before it.
    """

    def __init__(
        self,
        name: str,
        target: str | Sequence[str],
        env: dict[str, str],
        log_dir: Path,
        *,
        workers: int = 1,
        options: tuple[str, ...] = (),
        root: Path = ROOT,
        pythonpath: tuple[Path, ...] = (),
    ) -> None:
        self.name = name
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"{name}.log"
        self._log: IO[bytes] = self.log_path.open("wb")
        if isinstance(target, str):
            command = [_hypercorn(), "--workers", str(workers), "--bind", f"127.0.0.1:{self.port}"]
            command += [*options, target]
        else:
            command = [part.replace("{port}", str(self.port)) for part in target]
        search = os.pathsep.join(str(path) for path in (*pythonpath, root))
        # Rate limits off (one client address sends everything), unless ``env`` says otherwise.
        full_env = {**os.environ, "PYTHONPATH": search, "RATE_LIMIT_ENABLED": "false", **env}
        self.process = subprocess.Popen(
            command,
            cwd=root,
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, path: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.base + path, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not answer {path}:\n{self.log_tail()}")
            time.sleep(0.2)

    def cpu_seconds(self) -> float | None:
        """User + system CPU time of the server's processes so far (Linux ``/proc``)."""
        group = self.process.pid  # start_new_session: the group id is the leader's pid
        total = 0
        try:
            stats = list(Path("/proc").glob("[0-9]*/stat"))
        except OSError:
            return None
        for stat in stats:
            try:
                fields = stat.read_text().rpartition(")")[2].split()
            except OSError:
                continue  # the process went away
            if int(fields[2]) == group:
                total += int(fields[11]) + int(fields[12])
        return total / CLOCK_TICKS if total else None

    def log_size(self) -> int:
        """Bytes written to the log so far: pass it to ``log_since`` to read what came after."""
        self._log.flush()
        return self.log_path.stat().st_size

    def log_since(self, offset: int) -> str:
        self._log.flush()
        with self.log_path.open("rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")

    def log_tail(self, lines: int = 30) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def signal(self, number: signal.Signals) -> None:
        """Send ``number`` to every process of the server (SIGKILL: a crash; SIGTERM: a stop)."""
        try:
            os.killpg(self.process.pid, number)
        except ProcessLookupError:
            pass  # the whole group is gone already

    def stop(self) -> None:
        """SIGTERM to the group, SIGKILL to what is left after 10 s."""
        group = self.process.pid
        try:
            if self.process.poll() is None:
                os.killpg(group, signal.SIGTERM)
                try:
                    self.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
            os.killpg(group, signal.SIGKILL)  # the worker, should it outlive the parent
        except ProcessLookupError:
            pass  # the whole group is gone already
        self.process.wait()
        self._log.close()


@contextmanager
def serving(
    name: str, target: str, env: dict[str, str], log_dir: Path, ready_path: str
) -> Iterator[Server]:
    server = Server(name, target, env, log_dir)
    try:
        server.wait_ready(ready_path)
        yield server
    finally:
        server.stop()


def stop_servers_on_sigterm() -> None:
    """A SIGTERM to a benchmark unwinds it (``SystemExit``), so that its servers are stopped."""

    def unwind(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, unwind)
