"""Fixtures for the deploy checks: the shipped nginx config in a real nginx, in
front of a real `notify serve` (the console script the Dockerfile runs).

Both run as child processes on free ports, with their logs, pid and temp files in a
temp folder; readiness is polled with a deadline, never waited for with a fixed sleep.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.services.principal import Role
from service.services.tokens import mint_token
from tests.support import child_process

from . import nginx_config

NGINX_HINT = (
    "nginx is not installed: the deploy tests run the shipped config in a real nginx. "
    "Install Debian's package: `apt-get install -y nginx`."
)
# The servers started here verify HS256 tokens signed with this key.
JWT_SECRET = "deploy-tests-hs256-key-0123456789abcdef"
BASE_ENV = {
    "NOTIFY_JWT_SECRET": JWT_SECRET,
    "NOTIFY_ENV": "test",
    "NOTIFY_REDIS_URL": "memory://",
    "NOTIFY_HOST": "127.0.0.1",
    # Small, so a test sees several heartbeats in a second or two.
    "NOTIFY_HEARTBEAT_S": "1",
    "NOTIFY_SHUTDOWN_GRACE_S": "3",
    "NOTIFY_LOG_FORMAT": "json",
    "NOTIFY_LOG_LEVEL": "info",
    "NOTIFY_PROXY_HEADERS": "true",
    "NOTIFY_FORWARDED_ALLOW_IPS": "127.0.0.1",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def poll(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def find_nginx() -> str:
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
    )
    if found is None:
        pytest.fail(NGINX_HINT, pytrace=False)
    return found


def notify_script() -> str:
    script = Path(sys.executable).with_name("notify")
    if not script.exists():
        pytest.fail(f"{script} not found: install the project (`pip install -e .`)", pytrace=False)
    return str(script)


def mint(sub: str, role: Role = Role.PATIENT, scopes: tuple[str, ...] = ()) -> str:
    return mint_token(
        secret=JWT_SECRET,
        sub=sub,
        audience="notify",
        issuer="notify-dev",
        role=role,
        scopes=scopes,
        ttl_s=600,
    )


def publisher_token() -> str:
    return mint("svc_deploy_tests", Role.SERVICE, ("events:publish",))


def event_body(patient_id: str, appointment_id: str = "ap_1") -> dict[str, Any]:
    starts = datetime(2026, 12, 1, 14, 0, tzinfo=UTC)
    return {
        "type": "appointment.rescheduled",
        "patient_id": patient_id,
        "appointment_id": appointment_id,
        "occurred_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "data": {
            "status": "scheduled",
            "starts_at": starts.isoformat().replace("+00:00", "Z"),
            "ends_at": (starts + timedelta(minutes=30)).isoformat().replace("+00:00", "Z"),
        },
    }


class NotifyServer:
    """`notify serve` as a child process, configured only through NOTIFY_ variables."""

    def __init__(self, workdir: Path, **env: str) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self.log_path = workdir / f"notify-{self.port}.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFY_")}
        self.env.update(BASE_ENV)
        self.env.update(env)
        self.env["NOTIFY_PORT"] = str(self.port)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 30) -> NotifyServer:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [notify_script(), "serve"], env=self.env, stdout=log, stderr=subprocess.STDOUT
            )

        child_process.wait_ready(
            self.proc,
            f"{self.base_url}/health/ready",
            name="notify serve",
            timeout_s=timeout_s,
            log=self.log,
        )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def open_streams(self, transport: str) -> float:
        """The service's own gauge: how many streams it holds open right now."""
        text = httpx.get(f"{self.base_url}/metrics", timeout=2).text
        match = re.search(
            rf'^notify_open_streams\{{[^}}]*transport="{transport}"[^}}]*\}} (\S+)$', text, re.M
        )
        return float(match.group(1)) if match else 0.0

    def publish(self, token: str, event: dict[str, Any]) -> dict[str, Any]:
        response = httpx.post(
            f"{self.base_url}/v1/events",
            json=event,
            headers={"Authorization": f"Bearer {token}"},
            timeout=5,
        )
        assert response.status_code == 201, response.text
        stored: dict[str, Any] = response.json()
        return stored

    def terminate(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        child_process.stop(self.proc, timeout_s=30)


class Nginx:
    """The shipped config rendered into a temp folder, run as a foreground child."""

    def __init__(
        self,
        upstream_port: int,
        overrides: dict[tuple[str, ...], dict[str, list[str]]] | None = None,
    ) -> None:
        self.binary = find_nginx()
        # Not under pytest's 0700 tmp: when the master runs as root, the workers
        # (www-data, the shipped `user`) must reach their temp folders.
        self.dir = Path(tempfile.mkdtemp(prefix="notify-nginx-"))
        self.dir.chmod(0o755)
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self.conf = nginx_config.render_to(
            nginx_config.load(),
            self.dir,
            listen=f"127.0.0.1:{self.port}",
            upstream=f"127.0.0.1:{upstream_port}",
            overrides=overrides,
        )
        self.access_log = self.dir / "logs" / "notify-access.log"
        self.error_log = self.dir / "logs" / "error.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self, *extra: str) -> list[str]:
        # -e: the log used before the config is read (Debian's default is stderr).
        return [self.binary, "-c", str(self.conf), "-e", "stderr", *extra]

    def start(self, timeout_s: float = 15) -> Nginx:
        with (self.dir / "stderr.log").open("wb") as out:
            self.proc = subprocess.Popen(
                self.command("-g", "daemon off;"), stdout=out, stderr=subprocess.STDOUT
            )

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"nginx exited with {self.proc.returncode}: "
                    f"{(self.dir / 'stderr.log').read_text()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"{self.base_url}/nginx-health", timeout=1).status_code == 200
            return False

        poll(ready, timeout_s, "nginx to answer")
        return self

    def access_lines(self) -> list[str]:
        return self.access_log.read_text().splitlines() if self.access_log.exists() else []

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # SIGTERM: fast shutdown (SIGQUIT would wait worker_shutdown_timeout
            # for open streams).
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def nginx_binary() -> str:
    return find_nginx()


@pytest.fixture(scope="module")
def notify_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NotifyServer]:
    """One service for a module's read-only checks (memory broker: one process)."""
    server = NotifyServer(tmp_path_factory.mktemp("notify"))
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def nginx(notify_server: NotifyServer) -> Iterator[Nginx]:
    """The shipped nginx config, unchanged but for ports and paths."""
    proxy = Nginx(notify_server.port)
    try:
        yield proxy.start()
    finally:
        proxy.stop()


SpawnNotify = Callable[..., NotifyServer]


@pytest.fixture
def spawn_notify(tmp_path: Path) -> Iterator[SpawnNotify]:
    """Start a service of the test's own (it may be SIGTERMed); stopped afterwards."""
    started: list[NotifyServer] = []

    def spawn(**env: str) -> NotifyServer:
        server = NotifyServer(tmp_path, **env)
        started.append(server)
        return server.start()

    yield spawn
    for server in started:
        server.stop()


SpawnNginx = Callable[..., Nginx]


@pytest.fixture
def spawn_nginx() -> Iterator[SpawnNginx]:
    started: list[Nginx] = []

    def spawn(
        upstream_port: int, overrides: dict[tuple[str, ...], dict[str, list[str]]] | None = None
    ) -> Nginx:
        proxy = Nginx(upstream_port, overrides)
        started.append(proxy)
        return proxy.start()

    yield spawn
    for proxy in started:
        proxy.stop()
