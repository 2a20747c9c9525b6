"""The npm package `@appointment-notify/client` (clients/js) as a user gets it: `npm
pack`, then `npm install <tarball>` into a scratch project (CommonJS by default, as
`npm init` makes it) under Node (/usr/bin/node, 20 or newer)."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.config import Settings
from service.services.principal import Role
from tests.support.app_server import ServiceProcess
from tests.support.events import event
from tests.support.redis_server import EXACT_TRIM, RedisServer, free_port
from tests.support.tokens import Tokens

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "clients" / "js"
# npm's cache stays inside the repository's ignored .cache (not the user's ~/.npm).
NPM_CACHE = ROOT / ".cache" / "npm"
# The EventSource implementation the README names for Node, pinned (and its one
# dependency, so that nothing floats).
EVENTSOURCE = ("eventsource@4.1.1", "eventsource-parser@3.0.6")
# The type check of the declarations, as a TypeScript user's project runs it.
TYPESCRIPT = "typescript@5.9.3"
# Small, so that a gap is a few publishes away.
HISTORY_MAXLEN = 5


@functools.cache
def node() -> str:
    """/usr/bin/node (or the PATH's), checked once to be Node 20 or newer."""
    found = shutil.which("node")
    if found is None:
        pytest.fail("node is missing: apt-get install nodejs npm (Node 20+)", pytrace=False)
    version = subprocess.run(
        [found, "--version"], capture_output=True, text=True, timeout=30, check=True
    ).stdout.strip()
    if int(version.lstrip("v").split(".")[0]) < 20:
        pytest.fail(
            f"node {version}: the client needs Node 20+ (Debian 12's nodejs is 18; "
            "NodeSource's nodejs 20 or Debian 13's)",
            pytrace=False,
        )
    return found


def npm(*args: str, cwd: Path, timeout_s: float = 300) -> str:
    found = shutil.which("npm")
    if found is None:
        pytest.fail("npm is missing: apt-get install npm", pytrace=False)
    env = {**os.environ, "npm_config_cache": str(NPM_CACHE), "npm_config_update_notifier": "false"}
    result = subprocess.run(
        [found, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s
    )
    assert result.returncode == 0, f"npm {' '.join(args)}: {result.stdout}\n{result.stderr}"
    return result.stdout


@dataclass(frozen=True)
class Packed:
    tarball: Path
    files: list[str]
    version: str


@pytest.fixture(scope="package")
def packed(tmp_path_factory: pytest.TempPathFactory) -> Packed:
    """`npm pack` of a copy of clients/js (its prepack build writes the CJS entry)."""
    work = tmp_path_factory.mktemp("pack")
    source = work / "client"
    shutil.copytree(PACKAGE, source, ignore=shutil.ignore_patterns("node_modules", "*.tgz"))
    report = json.loads(npm("pack", "--json", "--pack-destination", str(work), cwd=source))
    (entry,) = report
    return Packed(
        tarball=work / entry["filename"],
        files=sorted(f["path"] for f in entry["files"]),
        version=entry["version"],
    )


@dataclass(frozen=True)
class Project:
    dir: Path

    def run(self, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [node(), *args], cwd=self.dir, capture_output=True, text=True, timeout=timeout_s
        )


@pytest.fixture(scope="package")
def project(packed: Packed, tmp_path_factory: pytest.TempPathFactory) -> Project:
    """A scratch `npm init` project with the tarball, the pinned eventsource and
    TypeScript."""
    directory = tmp_path_factory.mktemp("scratch")
    npm("init", "-y", cwd=directory)
    npm(
        "install",
        "--no-audit",
        "--no-fund",
        str(packed.tarball),
        *EVENTSOURCE,
        TYPESCRIPT,
        cwd=directory,
    )
    return Project(dir=directory)


class Service:
    """`notify serve` on a fixed port (a restart is a successor on the same port, so a
    client's own reconnects find it) with a Redis of the test session."""

    def __init__(self, redis: RedisServer, workdir: Path) -> None:
        self.settings = Settings(
            _env_file=None,
            env="test",
            redis_url=redis.url,
            key_prefix=f"node{uuid.uuid4().hex[:8]}:",
            history_maxlen=HISTORY_MAXLEN,
            # Short: EventSource's own reconnect after a restart happens within a test.
            sse_retry_ms=300,
            heartbeat_s=1.0,
            shutdown_grace_s=1.0,
            log_format="json",
        )
        self.workdir = workdir
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.proc = self._spawn()
        self.publisher = Tokens().make("svc_node", role=Role.SERVICE, scopes=("events:publish",))

    def _spawn(self) -> ServiceProcess:
        log = self.workdir / f"notify-{uuid.uuid4().hex[:6]}.log"
        proc = ServiceProcess(self.settings, log_path=str(log), port=self.port)
        proc.start(timeout_s=60)
        return proc

    def restart(self) -> None:
        self.proc.stop()
        self.proc = self._spawn()

    def publish(self, patient_id: str, appointment_id: str = "ap_1") -> str:
        response = httpx.post(
            f"{self.base_url}/v1/events",
            json=event(patient_id, appointment_id),
            headers={"Authorization": f"Bearer {self.publisher}"},
            timeout=10,
        )
        assert response.status_code == 201, response.text
        event_id: str = response.json()["id"]
        return event_id

    def open_streams(self) -> float:
        """The process' `notify_open_streams{transport="sse"}` gauge, as scraped."""
        text = httpx.get(f"{self.base_url}/metrics", timeout=10).text
        match = re.search(r'^notify_open_streams\{transport="sse"\} (\S+)$', text, re.M)
        return float(match.group(1)) if match else 0.0

    def wait_open_streams(self, count: int, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while self.open_streams() != count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.open_streams()} open SSE streams, not {count}")
            time.sleep(0.05)

    def stop(self) -> None:
        self.proc.stop()


@pytest.fixture(scope="package")
def node_redis() -> Iterator[RedisServer]:
    server = RedisServer(extra_args=EXACT_TRIM)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="package")
def service(node_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    running = Service(node_redis, tmp_path_factory.mktemp("node-service"))
    try:
        yield running
    finally:
        running.stop()


def new_patient() -> str:
    return f"pt_node_{uuid.uuid4().hex[:10]}"


class NodeClient:
    """A Node process running the client; each callback is one JSON line on stdout,
    read by a thread into a list that tests wait on (with a deadline)."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
        self.lines: list[dict[str, Any]] = []
        self.stderr = ""
        self._changed = threading.Condition()
        self.proc = subprocess.Popen(
            [node(), *args],
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._readers = [
            threading.Thread(target=self._read, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                try:
                    self.lines.append(json.loads(line))
                except json.JSONDecodeError:
                    self.lines.append({"kind": "text", "text": line.rstrip("\n")})
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        self.stderr = self.proc.stderr.read()

    def of(self, kind: str) -> list[dict[str, Any]]:
        with self._changed:
            return [line for line in self.lines if line.get("kind") == kind]

    def wait(self, what: str, predicate: Callable[[], bool], timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.proc.poll() is not None and not predicate()):
                    self.finish()
                    raise AssertionError(
                        f"waiting for {what}: got {self.lines}, exit {self.proc.poll()}, "
                        f"stderr {self.stderr!r}"
                    )
                self._changed.wait(min(remaining, 0.5))

    def wait_kind(self, kind: str, count: int = 1, timeout_s: float = 30) -> list[dict[str, Any]]:
        self.wait(f"{count} of {kind}", lambda: len(self.of(kind)) >= count, timeout_s)
        return self.of(kind)

    def finish(self, timeout_s: float = 30) -> int:
        """Close stdin (the script then closes its client) and wait for the exit."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for reader in self._readers:
            reader.join(timeout=timeout_s)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return self.proc.returncode
