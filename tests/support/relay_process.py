"""`notify relay` as a child process: started, probed, killed (-9) and restarted
by the tests like a pod would be."""

from __future__ import annotations

import signal
import subprocess
import sys

import httpx

from service.config import Settings
from tests.support import child_process
from tests.support.app_server import settings_env
from tests.support.redis_server import free_port


class RelayProcess:
    def __init__(self, settings: Settings, *, log_path: str | None = None) -> None:
        self.port = free_port()
        self.settings = settings.model_copy(update={"port": self.port, "host": "127.0.0.1"})
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *, wait_ready: bool = True, timeout_s: float = 30) -> None:
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "relay"],
            env=settings_env(self.settings),
            stdout=out,
            stderr=subprocess.STDOUT if self.log_path else subprocess.DEVNULL,
        )
        if not isinstance(out, int):
            out.close()
        if wait_ready:
            child_process.wait_ready(
                self.proc, f"{self.base_url}/health/ready", name="relay", timeout_s=timeout_s
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def live(self) -> bool:
        return child_process.answers(f"{self.base_url}/health/live")

    def ready(self) -> bool:
        return child_process.answers(f"{self.base_url}/health/ready")

    def metric(self, name: str) -> float:
        """The value of an unlabelled sample of the relay's /metrics."""
        text = httpx.get(f"{self.base_url}/metrics", timeout=5).text
        for line in text.splitlines():
            if line.startswith(f"{name} "):
                return float(line.split()[1])
        raise AssertionError(f"{name} not in the relay's metrics")

    def kill(self) -> None:
        """kill -9: no chance to finish or roll back anything itself."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        child_process.stop(self.proc, timeout_s=15)
