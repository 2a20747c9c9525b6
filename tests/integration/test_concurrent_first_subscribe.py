"""Streams of many patients opened at once, right after start-up, while the
pub/sub connection (in Cluster: each shard primary's) is still being set up:
every one of them must receive its patient's events.

Found by `python -m bench shards`, in Cluster: channels placed on a shard while
its connection was sending its first SSUBSCRIBE were never subscribed (their
streams opened, then stayed silent); and a burst of opens over the command pool
(NOTIFY_REDIS_MAX_CONNECTIONS) made redis-py's cluster pipeline close the whole
client, failing other requests with 500s.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import httpx
import pytest
from notify_publisher.topology import RedisMode, RedisTopology
from redis.crc import key_slot

from service.brokers.factory import build_broker
from tests.conftest import SettingsFactory, Tokens, bearer
from tests.support.app_server import run_app
from tests.support.publishing import publish_one
from tests.support.redis_topologies import LocalCluster
from tests.support.sse import SSEStream, open_sse, opened
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow

ME = "/v1/patients/me/events"
PATIENTS = 60


async def test_streams_opened_together_at_start_up_all_receive(
    make_settings: SettingsFactory, tokens: Tokens
) -> None:
    patients = [f"pt_burst_{i}" for i in range(PATIENTS)]
    async with (
        # A pool large enough for the burst: this test is about subscribing.
        run_app(make_settings(redis_max_connections=200)) as app,
        httpx.AsyncClient(base_url=app.base_url, timeout=10) as http,
        contextlib.AsyncExitStack() as stack,
    ):

        async def one(patient: str) -> SSEStream:
            stream = await stack.enter_async_context(
                open_sse(http, ME, headers=bearer(tokens.patient(patient)))
            )
            return await opened(stream)

        # All at once: the first one makes the broker open its connection(s).
        streams = await asyncio.gather(*(one(p) for p in patients))
        published = {p: await publish_one(app, p) for p in patients}
        for patient, stream in zip(patients, streams, strict=True):
            received = await stream.wait_events(1, timeout_s=10)
            assert [f.id for f in received] == [published[patient]], patient


async def test_a_burst_over_the_redis_pool_gets_retryable_answers_never_a_500(
    make_settings: SettingsFactory, tokens: Tokens
) -> None:
    patients = [f"pt_pool_{i}" for i in range(PATIENTS)]
    async with (
        run_app(make_settings(redis_max_connections=2)) as app,
        httpx.AsyncClient(base_url=app.base_url, timeout=10) as http,
        contextlib.AsyncExitStack() as stack,
    ):

        async def one(patient: str) -> SSEStream:
            return await stack.enter_async_context(
                open_sse(http, ME, headers=bearer(tokens.patient(patient)))
            )

        streams = await asyncio.gather(*(one(p) for p in patients))
        # Opened, or refused with the retry-able answer (a 200 event stream
        # with `retry:` and `event: reconnect`): EventSource comes back by itself.
        assert sorted({s.response.status_code for s in streams}) == [200]
        for stream in streams:
            await opened(stream)


@pytest.mark.own_topology
async def test_cluster_channels_placed_while_a_shard_connection_is_subscribing_are_subscribed(
    redis_cluster: LocalCluster,
) -> None:
    """Channels of one shard arrive one by one while its connection is being set
    up: each is subscribed (the first SSUBSCRIBE covered only those known then)."""
    prefix = f"c{uuid.uuid4().hex[:8]}:"
    ranges = [
        (low, high, i.port)
        for i in redis_cluster.topology()
        if i.is_primary
        for low, high in i.slots
    ]

    def owner(name: str) -> int:
        slot = key_slot(name.encode())
        return next(port for low, high, port in ranges if low <= slot <= high)

    names = [f"{prefix}patient:{{pt_{i}}}" for i in range(2000)]
    channels = [n for n in names if owner(n) == owner(names[0])][:150]
    broker = build_broker(
        RedisTopology(mode=RedisMode.CLUSTER, url=redis_cluster.url),
        control_channel=f"{prefix}control",
        max_connections=4,
        pool_timeout_s=2,
        socket_timeout_s=5,
    )
    received: set[str] = set()

    async def pull() -> None:
        # The broker only appends to its inbox: whoever reads it pulls.
        while True:
            for item in await broker.next_messages():
                if isinstance(item, tuple):
                    received.add(item[0])

    await broker.start()
    listener = asyncio.create_task(broker.run_listener())
    puller = asyncio.create_task(pull())
    try:
        assert await broker.wait_listening(10)
        for name in channels:  # spread over the shard connection's set-up
            await broker.subscribe(name)
            await asyncio.sleep(0.001)

        # Every channel confirmed: a publish to each reaches its subscriber.
        async def all_subscribed() -> bool:
            for name in set(channels) - received:
                await broker.publish_raw(name, "{}")
            await asyncio.sleep(0.05)
            return received >= set(channels)

        await eventually(all_subscribed, timeout_s=10, what="a message on every channel")
    finally:
        await broker.stop()
        listener.cancel()
        puller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
        with contextlib.suppress(asyncio.CancelledError):
            await puller
