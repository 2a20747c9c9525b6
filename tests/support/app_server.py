"""Run the real app under uvicorn, either in the test's own event loop (so the
loop-blocking guard watches the app too) or as a separate OS process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import uvicorn

from service.cli import uvicorn_options
from service.config import Settings
from service.main import create_app
from service.state import AppState
from tests.support import child_process
from tests.support.redis_server import free_port


@dataclass
class RunningApp:
    base_url: str
    server: uvicorn.Server
    state: AppState

    @property
    def ws_url(self) -> str:
        return self.base_url.replace("http://", "ws://")


@contextlib.asynccontextmanager
async def run_app(settings: Settings) -> AsyncIterator[RunningApp]:
    """uvicorn on a free port inside the current event loop."""
    app = create_app(settings)
    port = free_port()
    # The same uvicorn options as `notify serve`.
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, lifespan="on", **uvicorn_options(settings)
    )
    server = uvicorn.Server(config)
    # Signals belong to the test runner, not to this in-process server.
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 15
    while not server.started:
        if task.done():
            task.result()
            raise AssertionError("server stopped during start-up")
        if time.monotonic() > deadline:
            raise AssertionError("server did not start within 15 s")
        await asyncio.sleep(0.01)
    try:
        yield RunningApp(base_url=f"http://127.0.0.1:{port}", server=server, state=app.state.notify)
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=settings.shutdown_grace_s + 10)


def settings_env(settings: Settings) -> dict[str, str]:
    """The NOTIFY_* environment reproducing `settings` in a child process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFY_")}
    for name, value in settings.model_dump(exclude_none=True).items():
        if isinstance(value, list | tuple):
            value = ",".join(str(v) for v in value)
        elif hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[f"NOTIFY_{name.upper()}"] = str(value)
    return env


@contextlib.asynccontextmanager
async def running(proc: ServiceProcess) -> AsyncIterator[ServiceProcess]:
    """`proc` started (and ready) for the block, stopped after it."""
    await asyncio.to_thread(proc.start)
    try:
        yield proc
    finally:
        await asyncio.to_thread(proc.stop)


class ServiceProcess:
    """`notify serve` as a child process (several processes, SIGTERM tests)."""

    def __init__(
        self, settings: Settings, *, log_path: str | None = None, port: int | None = None
    ) -> None:
        # A fixed `port`: a successor of a stopped process behind the same proxy.
        self.port = port or free_port()
        self.settings = settings.model_copy(update={"port": self.port, "host": "127.0.0.1"})
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 20) -> None:
        out = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve"],
            env=settings_env(self.settings),
            stdout=out,
            stderr=subprocess.STDOUT if self.log_path else subprocess.DEVNULL,
        )
        if not isinstance(out, int):
            out.close()  # the child holds its own descriptor
        child_process.wait_ready(
            self.proc, f"{self.base_url}/health/ready", name="service", timeout_s=timeout_s
        )

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout_s)

    def stop(self) -> None:
        child_process.stop(self.proc, timeout_s=30)
