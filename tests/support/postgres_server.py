"""PostgreSQL server processes owned by the tests: Debian's server binaries
(`/usr/lib/postgresql/<major>/bin`, not on PATH), `initdb` into a temporary
directory, a free TCP port on 127.0.0.1 and the unix socket in that directory, so
fault tests can stop, kill and restart them. Never the machine's own server on 5432.

`initdb` and `postgres` refuse to run as root: as root they run as the `postgres`
user (the data directory is handed to it), otherwise as whoever runs the tests."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import psycopg

from tests.support.redis_server import free_port, wait_until

BIN_ROOT = Path("/usr/lib/postgresql")
INSTALL_HINT = (
    "No PostgreSQL server binaries in /usr/lib/postgresql/<major>/bin: install them "
    "(`apt-get install -y postgresql`; scripts/ensure-system-packages does it as root)."
)
# The Unix user the server runs as when the tests run as root.
SERVER_USER = "postgres"


def find_bin_dir() -> Path:
    """The newest major version's bin directory that has `initdb` and `postgres`."""
    majors = []
    if BIN_ROOT.is_dir():
        for child in BIN_ROOT.iterdir():
            if child.name.isdigit() and (child / "bin" / "postgres").exists():
                majors.append(int(child.name))
    if not majors:
        raise RuntimeError(INSTALL_HINT)
    return BIN_ROOT / str(max(majors)) / "bin"


def _run_as() -> dict[str, Any]:
    """Popen arguments that drop root to the server user (same user otherwise)."""
    if os.geteuid() != 0:
        return {}
    entry = pwd.getpwnam(SERVER_USER)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


class PostgresServer:
    """One throwaway cluster: `start()` runs initdb the first time; `stop()`,
    `kill()` and `restart()` keep the data (a restart is a real restart)."""

    def __init__(self, port: int | None = None) -> None:
        self.bin_dir = find_bin_dir()
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="notify-pg-"))
        self.data_dir = self.dir / "data"
        self.socket_dir = self.dir / "socket"
        self.log_path = self.dir / "server.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._initialised = False

    @property
    def dsn(self) -> str:
        """A `postgresql://` URL as NOTIFY_OUTBOX_DSN takes it (TCP)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    def _init(self) -> None:
        self.socket_dir.mkdir()
        if os.geteuid() == 0:
            entry = pwd.getpwnam(SERVER_USER)
            for path in (self.dir, self.socket_dir):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        prefix = ["runuser", "-u", SERVER_USER, "--"] if os.geteuid() == 0 else []
        subprocess.run(
            [
                *prefix,
                str(self.bin_dir / "initdb"),
                "--pgdata",
                str(self.data_dir),
                "--username",
                "postgres",
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._initialised = True

    def start(self) -> None:
        if not self._initialised:
            self._init()
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child holds its own descriptor
        try:
            self._proc = subprocess.Popen(
                [
                    str(self.bin_dir / "postgres"),
                    "-D",
                    str(self.data_dir),
                    "-p",
                    str(self.port),
                    "-k",
                    str(self.socket_dir),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    # Throwaway data: no fsync; enough connections for two relays,
                    # an app and the test's own.
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=100",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                **_run_as(),
            )
        finally:
            log.close()
        try:
            wait_until(self.accepts_connections, 20, f"postgres on port {self.port} did not start")
        except AssertionError as exc:
            self.kill()
            tail = self.log_path.read_text()[-2000:] if self.log_path.exists() else "(no log)"
            raise AssertionError(f"{exc}; its log ends with:\n{tail}") from None

    def accepts_connections(self) -> bool:
        if not self.running:
            return False
        try:
            with psycopg.connect(self.dsn, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn, **kwargs)

    def stop(self) -> None:
        """Fast shutdown (SIGINT): open transactions are rolled back, clients
        disconnected, data kept."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._proc = None

    def kill(self) -> None:
        """SIGKILL of the postmaster (its backends follow); the next start recovers."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        self._proc = None
        # Orphaned backends exit once they notice the postmaster is gone; the next
        # start waits for the shared memory they hold (postmaster.pid) to be free.

    def restart(self) -> None:
        self.stop()
        self.start()

    def remove(self) -> None:
        self.stop()
        with contextlib.suppress(OSError):
            shutil.rmtree(self.dir)
