"""Real faults: Redis restarted mid-stream, the pub/sub connection killed while a
publisher runs, malformed input on the channel, a stalled reader."""

from __future__ import annotations

import asyncio
import json
import socket

import httpx
import pytest
import redis.asyncio as aioredis

from service.brokers.redis import RedisBroker
from service.main import create_app
from tests.conftest import SettingsFactory, Tokens, bearer
from tests.support.app_server import RunningApp, run_app
from tests.support.events import event_dict
from tests.support.metrics import metric
from tests.support.publishing import publish_one
from tests.support.raw_redis import raw_publish
from tests.support.redis_server import RedisServer
from tests.support.sse import open_sse
from tests.support.waiting import eventually

ME = "/v1/patients/me/events"


async def wait_ready(http: httpx.AsyncClient, expected: int, timeout_s: float = 20) -> None:
    async def answers() -> bool:
        return (await http.get("/health/ready")).status_code == expected

    await eventually(answers, timeout_s=timeout_s, what=f"/health/ready {expected}")


async def test_redis_restart_mid_stream(
    own_redis: RedisServer, make_settings: SettingsFactory, tokens: Tokens
) -> None:
    settings = make_settings(redis_url=own_redis.url)
    async with (
        run_app(settings) as app,
        httpx.AsyncClient(base_url=app.base_url, timeout=10) as http,
        open_sse(http, ME, headers=bearer(tokens.patient("pt_1"))) as s,
    ):
        await s.wait_for(lambda st: bool(st.frames), what="stream open")
        await publish_one(app)
        await s.wait_events(1)

        await asyncio.to_thread(own_redis.stop, kill=True)
        await wait_ready(http, 503)
        body = (await http.get("/health/ready")).json()
        assert body["broker"] == "unreachable"
        assert str(own_redis.port) not in json.dumps(body)
        assert (await http.get("/health/live")).status_code == 200

        await asyncio.to_thread(own_redis.start)
        await wait_ready(http, 200)
        # History died with the server (no persistence): the client is told.
        await s.wait_for(lambda st: any(f.event == "gap" for f in st.events), what="gap")
        after = await publish_one(app)
        frames = await s.wait_events(2)
        assert frames[-1].id == after
        assert not s.ended.is_set()


async def test_pubsub_connection_killed_while_publishing(
    own_redis: RedisServer, make_settings: SettingsFactory, tokens: Tokens
) -> None:
    settings = make_settings(redis_url=own_redis.url)
    admin = aioredis.Redis(host="127.0.0.1", port=own_redis.port)
    reconnects = metric("notify_listener_reconnects_total")
    try:
        async with (
            run_app(settings) as app,
            httpx.AsyncClient(base_url=app.base_url, timeout=10) as http,
            open_sse(http, ME, headers=bearer(tokens.patient("pt_1"))) as s,
        ):
            await s.wait_for(lambda st: bool(st.frames), what="stream open")
            published: list[str] = []
            for i in range(150):
                published.append(await publish_one(app))
                if i in (40, 90):
                    killed = await admin.execute_command(  # type: ignore[no-untyped-call]
                        "CLIENT", "KILL", "TYPE", "pubsub"
                    )
                    assert int(killed) >= 1
                await asyncio.sleep(0.003)
            frames = await s.wait_events(len(published), timeout_s=30)
            assert [f.id for f in frames] == published
            assert not [f for f in s.events if f.event == "gap"]
    finally:
        await admin.aclose()
    assert metric("notify_listener_reconnects_total") >= reconnects + 2


async def test_malformed_events_are_dropped_listener_survives(
    app: RunningApp, tokens: Tokens
) -> None:
    invalid_before = metric("notify_events_received_total", outcome="invalid")
    async with (
        httpx.AsyncClient(base_url=app.base_url, timeout=10) as http,
        open_sse(http, ME, headers=bearer(tokens.patient("pt_1"))) as s,
    ):
        await s.wait_for(lambda st: bool(st.frames), what="stream open")
        bad = [
            b"{not json",
            b"\xff\xfe\x00",
            json.dumps({**event_dict("pt_1"), "type": "appointment.exploded"}).encode(),
            json.dumps({**event_dict("pt_1"), "ssn": "123"}).encode(),
            json.dumps(event_dict("pt_2")).encode(),
        ]
        for raw in bad:
            await raw_publish(app.state.settings, "pt_1", raw)
        good = await publish_one(app)
        (frame,) = await s.wait_events(1)
        assert frame.id == good
        assert metric("notify_events_received_total", outcome="invalid") == invalid_before + len(
            bad
        )
        assert (await http.get("/health/ready")).status_code == 200


async def test_stalled_reader_is_closed_alone(
    make_settings: SettingsFactory, tokens: Tokens
) -> None:
    # A short send timeout so the stalled writer gives up before the test ends.
    settings = make_settings(client_queue_max=4, send_timeout_s=2)
    slow_before = metric("notify_slow_consumers_total", transport="sse")
    async with run_app(settings) as app:
        port = int(app.base_url.rsplit(":", 1)[1])
        # A client that sends its request and then never reads: a tiny receive
        # buffer so the server's writes back up quickly.
        stalled = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(stalled, ("127.0.0.1", port))
        request = f"GET {ME} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {tokens.patient('pt_1')}\r\n\r\n"
        await loop.sock_sendall(stalled, request.encode())
        async with (
            httpx.AsyncClient(base_url=app.base_url, timeout=30) as http,
            open_sse(http, ME, headers=bearer(tokens.patient("pt_1"))) as healthy,
        ):
            await healthy.wait_for(lambda st: bool(st.frames), what="stream open")

            await eventually(lambda: len(app.state.hub.queues) == 2, what="stalled stream attached")
            # Far more than the kernel's socket buffers can absorb.
            big = "x" * 60_000
            sent = [await publish_one(app, blob=big) for _ in range(250)]
            frames = await healthy.wait_events(len(sent), timeout_s=60)
            assert [f.id for f in frames] == sent
            assert metric("notify_slow_consumers_total", transport="sse") == slow_before + 1
            assert not healthy.ended.is_set()
        stalled.close()


async def test_start_up_given_up_after_the_listener_connected_closes_its_connections(
    own_redis: RedisServer, make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Start-up cancelled once the listener holds its pub/sub connection (and the
    pool its PING connection), as a server that gives up on a slow start-up does:
    the lifespan stops the listener and closes the pools. Left to the GC, such a
    connection fails a later test with an unclosed-socket ResourceWarning."""
    listening = asyncio.Event()
    wait_listening = RedisBroker.wait_listening

    async def listening_then_stuck(self: RedisBroker, timeout_s: float) -> bool:
        assert await wait_listening(self, timeout_s)
        listening.set()
        await asyncio.Event().wait()  # start-up stalls here until given up
        return True

    monkeypatch.setattr(RedisBroker, "wait_listening", listening_then_stuck)
    app = create_app(make_settings(redis_url=own_redis.url))

    async def start_up() -> None:
        async with app.router.lifespan_context(app):
            raise AssertionError("start-up was meant to stall")

    admin = aioredis.Redis(host="127.0.0.1", port=own_redis.port)
    try:
        baseline = len(await admin.client_list())  # the admin connection itself
        starting = asyncio.create_task(start_up())
        await asyncio.wait_for(listening.wait(), 10)
        assert len(await admin.client_list(_type="pubsub")) == 1
        starting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await starting

        async def only_the_admin_left() -> bool:
            return len(await admin.client_list()) == baseline

        await eventually(only_the_admin_left, what="the service's connections to close")
    finally:
        await admin.aclose()
