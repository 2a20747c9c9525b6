"""A server run by a test as a child process: waited on until its readiness URL
answers 200 (failing at once, with its log, when it exits instead), and stopped
with SIGTERM, then SIGKILL when it does not exit in time."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Callable

import httpx


def answers(url: str) -> bool:
    """The URL answers 200 (a probe: no answer at all is False, not an error)."""
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(url, timeout=1).status_code == 200
    return False


def wait_ready(
    proc: subprocess.Popen[bytes],
    ready_url: str,
    *,
    name: str,
    timeout_s: float,
    log: Callable[[], str] | None = None,
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            detail = f":\n{log()}" if log is not None else ""
            raise AssertionError(f"{name} exited with {proc.returncode} at start-up{detail}")
        if answers(ready_url):
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {name} to be ready")


def stop(proc: subprocess.Popen[bytes] | None, *, timeout_s: float) -> None:
    """SIGTERM (a graceful shutdown), SIGKILL after `timeout_s`; nothing when it
    never started or has exited already."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
