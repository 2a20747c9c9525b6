"""Supervised background tasks: a crash is logged with its traceback and the task
restarted with capped backoff; never a bare `create_task` whose error vanishes."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from typing import Final

import structlog

from service import metrics

log = structlog.get_logger(__name__)

RESTART_MIN_S: Final = 0.2
RESTART_MAX_S: Final = 10.0


class Supervisor:
    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._crashing: set[str] = set()
        self._stopping = False

    def spawn(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        """Run `factory()` until stop(); restart it (with backoff) whenever it ends."""
        # Its restart counter is exported at 0 from now on (see metrics.py).
        metrics.TASK_RESTARTS.labels(task=name)
        self._tasks[name] = asyncio.create_task(self._run(name, factory), name=name)

    async def _run(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        attempt = 0
        while not self._stopping:
            try:
                await factory()
            except asyncio.CancelledError:
                raise
            except Exception:
                self._crashing.add(name)
                metrics.TASK_RESTARTS.labels(task=name).inc()
                log.exception("task_crashed", task=name)
            else:
                if self._stopping:
                    return
                log.error("task_exited", task=name)
            delay = min(RESTART_MAX_S, RESTART_MIN_S * 2**attempt) * random.uniform(0.5, 1)  # noqa: S311
            attempt += 1
            await asyncio.sleep(delay)
            self._crashing.discard(name)

    @property
    def healthy(self) -> bool:
        """False while any task is between a crash and its restart, or has died."""
        return not self._crashing and all(not t.done() for t in self._tasks.values())

    async def stop(self, timeout_s: float) -> None:
        self._stopping = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout_s)
        self._tasks.clear()
