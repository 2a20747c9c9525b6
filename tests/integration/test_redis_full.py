"""A full Redis (`maxmemory` reached under `noeviction`) refuses writes and keeps
serving reads and pub/sub: a publish is a retry-able 503 naming the cause,
readiness stays 200 but says `degraded`, and streams keep delivering."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
import redis.asyncio as aioredis
from redis.exceptions import OutOfMemoryError

from tests.conftest import SettingsFactory, Tokens, bearer
from tests.support.app_server import run_app
from tests.support.events import event_dict
from tests.support.metrics import metric
from tests.support.raw_redis import raw_publish
from tests.support.redis_server import RedisServer
from tests.support.sse import open_sse, opened

pytestmark = pytest.mark.own_topology

ME = "/v1/patients/me/events"


@pytest.fixture
def noeviction_redis() -> Iterator[RedisServer]:
    server = RedisServer(extra_args=("--maxmemory-policy", "noeviction"))
    server.start()
    yield server
    server.stop(kill=True)


async def fill(admin: aioredis.Redis) -> None:
    """Fill Redis past its `maxmemory`: 2 MiB of data, then a cap 1 MiB below what
    is in use (at the cap itself, freed buffers let writes through now and then)."""
    chunk = b"x" * 64 * 1024
    for i in range(32):
        await admin.set(f"filler:{i}", chunk)
    used = int((await admin.info("memory"))["used_memory"])
    await admin.config_set("maxmemory", used - 1024 * 1024)
    with pytest.raises(OutOfMemoryError):
        await admin.set("filler:one-more", chunk)


async def test_a_full_redis_refuses_publishes_with_503_and_streams_go_on(
    noeviction_redis: RedisServer, make_settings: SettingsFactory, tokens: Tokens
) -> None:
    settings = make_settings(redis_url=noeviction_redis.url)
    admin = aioredis.Redis(host="127.0.0.1", port=noeviction_redis.port)
    refusals = metric("notify_redis_refusals_total", cause="redis_oom")
    try:
        async with (
            run_app(settings) as app,
            httpx.AsyncClient(base_url=app.base_url, timeout=10) as http,
            open_sse(http, ME, headers=bearer(tokens.patient("pt_1"))) as before,
        ):
            await opened(before)
            await fill(admin)

            response = await http.post(
                "/v1/events", json=event_dict("pt_1"), headers=bearer(tokens.service())
            )
            assert response.status_code == 503, response.text
            body = response.json()
            assert body["code"] == "redis_oom"
            assert body["detail"]
            assert "maxmemory'" not in body["detail"]  # not Redis' own text
            assert int(response.headers["Retry-After"]) >= 1
            assert metric("notify_redis_refusals_total", cause="redis_oom") == refusals + 1
            # Nothing was stored: history refused the XADD before anything else ran.
            history = await admin.xlen(f"{settings.key_prefix}history:{{pt_1}}")
            assert history == 0

            ready = await http.get("/health/ready")
            assert ready.status_code == 200
            assert ready.json()["status"] == "degraded"
            assert ready.json()["causes"] == ["redis_oom"]
            assert metric("notify_ready_degraded", cause="redis_oom") == 1

            # Streams still work on a full Redis: a new one opens (history head
            # read, SUBSCRIBE), and a raw PUBLISH reaches both.
            async with open_sse(http, ME, headers=bearer(tokens.patient("pt_1"))) as after:
                await opened(after)
                raw = event_dict("pt_1", "ap_raw")
                assert await raw_publish(settings, "pt_1", json.dumps(raw)) == 1
                for stream in (before, after):
                    [frame] = await stream.wait_events(1)
                    assert frame.json()["appointment_id"] == "ap_raw"

            # Memory back: the same publish goes through (the refusal stored nothing).
            await admin.config_set("maxmemory", 0)
            retried = await http.post(
                "/v1/events", json=event_dict("pt_1"), headers=bearer(tokens.service())
            )
            assert retried.status_code == 201, retried.text
            [raw_frame, stored] = await before.wait_events(2)
            assert raw_frame.id is None
            assert stored.id == retried.json()["id"]
            # A write went through: ready again, the gauge back to 0.
            ready = await http.get("/health/ready")
            assert (ready.status_code, ready.json()["status"]) == (200, "ready")
            assert metric("notify_ready_degraded", cause="redis_oom") == 0
    finally:
        await admin.aclose()
