from __future__ import annotations

import asyncio
import time

import pytest


async def test_blocking_call_is_detected_by_debug_loop() -> None:
    loop = asyncio.get_running_loop()
    assert loop.get_debug()
    assert loop.slow_callback_duration == pytest.approx(0.5)


@pytest.mark.xfail(strict=True, reason="the guard must fail a test that blocks the loop")
async def test_guard_fails_blocking_test() -> None:
    time.sleep(0.6)  # noqa: ASYNC251
    await asyncio.sleep(0)
