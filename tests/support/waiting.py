"""Waiting on a condition with a deadline: the only way tests wait."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable


async def eventually(
    predicate: Callable[[], bool | Awaitable[bool]],
    *,
    timeout_s: float = 10.0,
    what: str = "condition",
    interval_s: float = 0.02,
) -> None:
    """Poll `predicate` (sync or async) until it holds; fail after `timeout_s`.

    For state outside our control (HTTP probes, Redis, counters) that offers no
    event to await."""

    async def poll() -> None:
        while True:
            result = predicate()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return
            await asyncio.sleep(interval_s)

    try:
        await asyncio.wait_for(poll(), timeout_s)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout_s}s waiting for {what}") from None
