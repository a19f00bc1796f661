"""A private PgBouncer in transaction mode, in front of a PostgreSQL server, on a free port.

Debian's PgBouncer (1.18: ``make pgbouncer`` installs it) is started with a
configuration of its own in a temporary directory, and stopped and removed at
the end. PgBouncer refuses to run as root, so as root it runs as the
``postgres`` OS user (as ``reliability.postgres`` runs its clusters).

In transaction mode each transaction of a client runs on whichever server
connection is free, which is what breaks prepared statements (issue 22):
``DATABASE_PGBOUNCER=true`` makes the service fit for it.

Run as a script, it serves a command through a PgBouncer in front of ``--url``'s
server, with ``TEST_DATABASE_URL`` pointing at it and ``DATABASE_PGBOUNCER=true``
(``make test-pgbouncer`` runs the suite so):

    python -m reliability.pgbouncer --url postgresql+asyncpg://postgres@127.0.0.1:5432/db \\
        -- pytest -q
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import make_url

from bench.harness import free_port

__all__ = ["PgBouncer", "find_pgbouncer"]

_OS_USER = "postgres"


def find_pgbouncer() -> str | None:
    return shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None
    )


class PgBouncer:
    """PgBouncer on 127.0.0.1 and a free port, trusting user ``postgres``, in front of a server."""

    def __init__(
        self,
        server_port: int,
        *,
        server_host: str = "127.0.0.1",
        pool_mode: str = "transaction",
        pool_size: int = 20,
    ) -> None:
        binary = find_pgbouncer()
        if binary is None:
            raise RuntimeError("pgbouncer is not installed: run `make pgbouncer`")
        self.binary = binary
        self.root = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
        self.port = free_port()
        self.log = self.root / "pgbouncer.log"
        (self.root / "users.txt").write_text('"postgres" ""\n')
        (self.root / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={server_host} port={server_port}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {self.root / 'users.txt'}\n"
            f"pool_mode = {pool_mode}\n"
            f"default_pool_size = {pool_size}\n"
            "max_client_conn = 1000\n"
            "max_db_connections = 0\n"
            f"logfile = {self.log}\n"
            f"pidfile = {self.root / 'pgbouncer.pid'}\n"
            "ignore_startup_parameters = extra_float_digits\n"
        )
        self._as_root = os.geteuid() == 0
        if self._as_root:
            account = pwd.getpwnam(_OS_USER)
            for path in (self.root, *self.root.iterdir()):
                os.chown(path, account.pw_uid, account.pw_gid)
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def start(self, timeout: float = 10.0) -> None:
        command = [self.binary, str(self.root / "pgbouncer.ini")]
        if self._as_root:
            command = ["runuser", "-u", _OS_USER, "--", *command]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"pgbouncer exited at start:\n{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"pgbouncer did not listen:\n{self.log_tail()}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # SIGTERM: immediate shutdown
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="the database, as the server serves it")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    url = make_url(args.url)
    bouncer = PgBouncer(url.port or 5432, server_host=url.host or "127.0.0.1")
    bouncer.start()
    try:
        through = url.set(host="127.0.0.1", port=bouncer.port).render_as_string(hide_password=False)
        env = {**os.environ, "TEST_DATABASE_URL": through, "DATABASE_PGBOUNCER": "true"}
        print(f"PgBouncer {bouncer.port} (transaction mode) -> {url.host}:{url.port}", flush=True)
        return subprocess.call(command, env=env)
    finally:
        bouncer.stop()


if __name__ == "__main__":
    sys.exit(main())
