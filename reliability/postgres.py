"""A private PostgreSQL cluster for the reliability suite: made, stopped and removed by it.

The machine's own PostgreSQL is shared, and stopping it would break everyone
else's work. The outage test must stop its database, so it gets a cluster of its
own: ``initdb`` into a temporary directory, a free port, and ``pg_ctl`` to stop
and start it. PostgreSQL refuses to run as root, so as root the cluster runs as
the ``postgres`` OS user.

``PrivateCluster.replica_of(primary)`` makes a streaming replica of one
(``pg_basebackup -R``): a hot standby that follows the primary's WAL, whose
replay can be paused and resumed (``pause_replay``, ``resume_replay``) to make
it lag on demand, and killed (``kill``, SIGKILL to its postmaster).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
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
        self.primary: PrivateCluster | None = None
        """The cluster this one replicates, if it is a replica."""
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
        self._configure()

    @classmethod
    def replica_of(cls, primary: PrivateCluster) -> PrivateCluster:
        """A streaming replica of ``primary`` (running), made by ``pg_basebackup -R``; not started.

        It connects to the primary without a replication slot: the primary keeps
        ``wal_keep_size`` of WAL for it (set by ``create``), enough for the pauses
        the tests make.
        """
        replica = cls(primary.bin_dir)
        replica.primary = primary
        replica._run(
            "pg_basebackup",
            "--pgdata",
            str(replica.data),
            "--host",
            "127.0.0.1",
            "--port",
            str(primary.port),
            "--username",
            "postgres",
            "--wal-method=stream",
            "--checkpoint=fast",
            "--write-recovery-conf",
            "--no-sync",
        )
        return replica

    def _configure(self) -> None:
        # A hot standby is read-only; replication needs wal_level replica (the default) and
        # WAL kept for a replica that pauses. hot_standby_feedback spares the replica's
        # queries from cancellation by the primary's vacuum.
        settings = (
            "wal_keep_size = '256MB'\n"
            "hot_standby = on\n"
            "hot_standby_feedback = on\n"
            "max_standby_streaming_delay = -1\n"
            "wal_receiver_status_interval = 1s\n"
        )
        with (self.data / "postgresql.auto.conf").open("a") as conf:
            conf.write(settings)

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

    def kill(self) -> None:
        """SIGKILL the postmaster (a crash): its children exit when they notice, within a second."""
        pid = int((self.data / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGKILL)

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run ``statement`` with psql and return its output (unaligned, tuples only)."""
        command = [
            str(self.bin_dir / "psql"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--username",
            "postgres",
            "--dbname",
            database,
            "--no-psqlrc",
            "--tuples-only",
            "--no-align",
            "--command",
            statement,
        ]
        completed = subprocess.run(command, capture_output=True, text=True, timeout=30)
        if completed.returncode != 0:
            raise RuntimeError(f"psql {statement!r} failed: {completed.stderr}")
        return completed.stdout.strip()

    def pause_replay(self) -> None:
        """A replica stops applying WAL (it still receives it): it lags from now on."""
        self.sql("SELECT pg_wal_replay_pause()")

    def resume_replay(self) -> None:
        self.sql("SELECT pg_wal_replay_resume()")

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
