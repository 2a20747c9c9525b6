"""SIGTERM/SIGINT: drain first, then hand the signal to the server's own handler."""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any

import structlog

log = structlog.get_logger("service.lifespan")

SignalHandler = Callable[[int, FrameType | None], Any]


async def _await(awaitable: Awaitable[object]) -> object:
    return await awaitable


def chain_exit_signals(
    on_exit: Callable[[], None], wait_drained: Callable[[], Awaitable[object]]
) -> Callable[[], None]:
    """On the first SIGTERM/SIGINT: start the drain (`on_exit`) and pass the signal
    on to the server's own handler (uvicorn's sets `should_exit`) only once
    `wait_drained` returns. Returns an undo function.

    The lifespan shutdown only runs once every connection has ended, so draining
    must start from the signal itself; and uvicorn's shutdown closes every
    WebSocket with 1012 at once, which would pre-empt the staggered reconnect
    hints. A second signal is passed on at once (a second Ctrl-C forces the exit)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    previous: dict[int, Any] = {}
    signalled: list[int] = []
    # The drain task, referenced until it is done.
    draining: set[asyncio.Task[object]] = set()

    def drain_then(original: SignalHandler, signum: int, frame: FrameType | None) -> None:
        on_exit()
        task: asyncio.Task[object] = loop.create_task(_await(wait_drained()), name="drain")

        def done(finished: asyncio.Task[object]) -> None:
            draining.discard(finished)
            if not finished.cancelled() and finished.exception() is not None:
                log.error("drain_failed", exc_info=finished.exception())
            original(signum, frame)

        draining.add(task)
        task.add_done_callback(done)

    def make_handler(original: Any) -> SignalHandler:
        def handler(signum: int, frame: FrameType | None) -> None:
            if not callable(original):
                loop.call_soon_threadsafe(on_exit)
            elif signalled:
                original(signum, frame)
            else:
                signalled.append(signum)
                loop.call_soon_threadsafe(drain_then, original, signum, frame)

        return handler

    for sig in (signal.SIGTERM, signal.SIGINT):
        original = signal.getsignal(sig)
        previous[sig] = original
        signal.signal(sig, make_handler(original))

    def undo() -> None:
        for sig, original in previous.items():
            signal.signal(sig, original)

    return undo
