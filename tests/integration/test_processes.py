"""Real `notify serve` processes: two of them on one Redis (no split brain) and
SIGTERM with streams open (reconnect hints, exit inside the grace window, no
Redis connection left behind)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import httpx

from tests.conftest import SettingsFactory, Tokens, bearer
from tests.support.app_server import ServiceProcess, running
from tests.support.events import event_dict
from tests.support.redis_server import RedisServer
from tests.support.sse import open_sse, opened
from tests.support.waiting import eventually

ME = "/v1/patients/me/events"


async def test_event_reaches_streams_on_every_process(
    make_settings: SettingsFactory, tokens: Tokens, tmp_path: object
) -> None:
    settings = make_settings()
    token = tokens.patient("pt_1")
    async with (
        running(ServiceProcess(settings)) as a,
        running(ServiceProcess(settings)) as b,
        httpx.AsyncClient(timeout=10) as http,
        open_sse(http, f"{a.base_url}{ME}", headers=bearer(token)) as on_a,
        open_sse(http, f"{b.base_url}{ME}", headers=bearer(token)) as on_b,
    ):
        await opened(on_a)
        await opened(on_b)
        response = await http.post(
            f"{a.base_url}/v1/events", json=event_dict("pt_1"), headers=bearer(tokens.service())
        )
        assert response.status_code == 201
        for stream in (on_a, on_b):
            (frame,) = await stream.wait_events(1)
            assert frame.id == response.json()["id"]


async def test_sigterm_drains_streams_and_leaves_no_connections(
    own_redis: RedisServer, make_settings: SettingsFactory, tokens: Tokens
) -> None:
    grace = 4.0
    settings = make_settings(redis_url=own_redis.url, shutdown_grace_s=grace)
    baseline = own_redis.client_count("normal"), own_redis.client_count("pubsub")
    proc = ServiceProcess(settings)
    await asyncio.to_thread(proc.start)
    try:
        async with contextlib.AsyncExitStack() as stack:
            http = await stack.enter_async_context(httpx.AsyncClient(timeout=30))
            streams = [
                await opened(
                    await stack.enter_async_context(
                        open_sse(
                            http, f"{proc.base_url}{ME}", headers=bearer(tokens.patient(f"pt_{i}"))
                        )
                    )
                )
                for i in range(5)
            ]
            assert own_redis.client_count("pubsub") == baseline[1] + 1  # one per process
            started = time.monotonic()
            proc.terminate()
            for stream in streams:
                await stream.wait_ended(timeout_s=grace + 5)
                reconnect = [f for f in stream.events if f.event == "reconnect"]
                assert reconnect, "stream ended without a reconnect hint"
                assert reconnect[-1].retry is not None
            code = await asyncio.to_thread(proc.wait, grace + 10)
            # uvicorn re-raises the captured SIGTERM once it has shut down cleanly.
            assert code in (0, -15)
            assert time.monotonic() - started < grace + 3
    finally:
        await asyncio.to_thread(proc.stop)
    await eventually(
        lambda: (own_redis.client_count("normal"), own_redis.client_count("pubsub")) == baseline,
        what="Redis connections back to the baseline",
    )
