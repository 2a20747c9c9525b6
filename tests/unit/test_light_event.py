"""`LightEvent` behaves as the `asyncio.Event` it replaces in uvicorn's protocol."""

from __future__ import annotations

import asyncio

from service.transports.hand_over import LightEvent


async def test_wait_returns_at_once_when_set_and_waits_when_clear() -> None:
    event = LightEvent(value=True)
    assert await event.wait() is True
    event.clear()
    assert not event.is_set()
    waiters = [asyncio.create_task(event.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    event.set()
    assert await asyncio.gather(*waiters) == [True, True, True]
    assert event._waiters is None  # nothing kept once nobody waits


async def test_a_cancelled_waiter_leaves_no_trace() -> None:
    event = LightEvent()
    waiter = asyncio.create_task(event.wait())
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert event._waiters is None
    event.set()
    assert event.is_set()


async def test_set_then_clear_before_the_waiter_runs_still_wakes_it() -> None:
    # As asyncio.Event: a waiter woken by `set` returns even if `clear` follows.
    event = LightEvent()
    waiter = asyncio.create_task(event.wait())
    await asyncio.sleep(0)
    event.set()
    event.clear()
    assert await asyncio.wait_for(waiter, 1) is True
