"""A private PostgreSQL cluster for the reliability suite: made, stopped and removed by it.

The machine's own PostgreSQL is shared, and stopping it would break everyone
else's work. The outage test must stop its database, so it gets a cluster of its
own: ``initdb`` into a temporary directory, a free port, and ``pg_ctl`` to stop
and start it. PostgreSQL refuses to run as root, so as root the cluster runs as
the ``postgres`` OS user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from bench.harness import free_port

__all__ = ["PrivateCluster", "find_postgres_bin"]

_OS_USER = "postgres"


def find_postgres_bin() -> Path | None:
    """The directory of ``initdb`` and ``pg_ctl``: ``$POSTGRES_BIN``, else the newest installed."""
    configured = os.environ.get("POSTGRES_BIN")
    if configured:
        return Path(configured)
    installed = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda path: int(path.parent.parent.name) if path.parent.parent.name.isdigit() else 0,
    )
    if installed:
        return installed[-1].parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


class PrivateCluster:
    """A throw-away PostgreSQL server on 127.0.0.1 and a free port, trust auth, user postgres."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="reliability-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = free_port()
        self._as_root = os.geteuid() == 0
        if self._as_root:
            try:
                account = pwd.getpwnam(_OS_USER)
            except KeyError:
                raise RuntimeError(
                    "PostgreSQL refuses to run as root, and there is no `postgres` OS user to run "
                    "the private cluster as: install PostgreSQL's server package, or run as "
                    "another user."
                ) from None
            os.chown(self.root, account.pw_uid, account.pw_gid)

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, tool: str, *args: str, timeout: float = 60) -> None:
        command = [str(self.bin_dir / tool), *args]
        if self._as_root:
            command = ["runuser", "-u", _OS_USER, "--", *command]
        completed = subprocess.run(
            command, cwd=self.root, capture_output=True, text=True, timeout=timeout
        )
        if completed.returncode != 0:
            raise RuntimeError(
                f"{tool} {' '.join(args)} failed ({completed.returncode}):\n"
                f"{completed.stdout}{completed.stderr}\n{self.log_tail()}"
            )

    def create(self) -> None:
        """``initdb`` (not synced: the cluster is thrown away, its commits are still fsynced)."""
        self._run(
            "initdb",
            "--pgdata",
            str(self.data),
            "--username",
            "postgres",
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--no-sync",
        )

    def start(self) -> None:
        """Start and wait until it accepts connections."""
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        self._run(
            "pg_ctl",
            "--pgdata",
            str(self.data),
            "--log",
            str(self.log),
            "-o",
            options,
            "--wait",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop``: ``fast`` ends every session (rolling back what is open) and stops."""
        self._run("pg_ctl", "--pgdata", str(self.data), "--mode", mode, "--wait", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def destroy(self) -> None:
        """Stop it (immediately) if it runs, and remove its directory."""
        try:
            if self.running():
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
