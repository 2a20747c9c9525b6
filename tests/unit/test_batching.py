"""Coalescing per loop iteration (issue 15): one broker call for the reads and the
subscriptions of many connections, each caller still getting its own answer."""

from __future__ import annotations

import asyncio

import pytest
from notify_publisher.keys import RedisKeys

from service.fanout.hub import Hub
from service.fanout.queue import DeliveryQueue
from service.services.batching import KeyReader, TickBatcher

KEYS = RedisKeys("u:")


class FakeRedis:
    def __init__(self, values: dict[str, str]) -> None:
        self.values = values
        self.calls: list[tuple[str, ...]] = []
        self.fail: Exception | None = None

    async def get_values(self, *keys: str) -> list[str | None]:
        self.calls.append(keys)
        await asyncio.sleep(0)
        if self.fail is not None:
            raise self.fail
        return [self.values.get(k) for k in keys]


async def test_reads_of_one_iteration_share_one_mget() -> None:
    redis = FakeRedis({"a": "1", "c": "3"})
    reader = KeyReader(redis.get_values)
    answers = await asyncio.gather(
        reader.get_values("a", "b"), reader.get_values("c"), reader.get_values("a")
    )
    assert list(answers) == [["1", None], ["3"], ["1"]]
    assert len(redis.calls) == 1
    assert sorted(redis.calls[0]) == ["a", "b", "c"]  # each key once


async def test_a_value_written_between_batches_is_seen_by_the_next() -> None:
    redis = FakeRedis({})
    reader = KeyReader(redis.get_values)
    assert await reader.get_values("k") == [None]
    redis.values["k"] = "revoked"
    assert await reader.get_values("k") == ["revoked"]
    assert len(redis.calls) == 2


async def test_a_failed_batch_fails_every_caller() -> None:
    redis = FakeRedis({})
    redis.fail = ConnectionError("down")
    reader = KeyReader(redis.get_values)
    results = await asyncio.gather(
        reader.get_values("a"), reader.get_values("b"), return_exceptions=True
    )
    assert all(isinstance(r, ConnectionError) for r in results)


async def test_a_cancelled_caller_does_not_cancel_the_others() -> None:
    release = asyncio.Event()

    async def slow(items: list[int]) -> list[int]:
        await release.wait()
        return [i * 2 for i in items]

    batcher: TickBatcher[int, int] = TickBatcher(slow, operation="test")
    first = asyncio.create_task(batcher.get(1))
    second = asyncio.create_task(batcher.get(2))
    await asyncio.sleep(0)
    first.cancel()
    release.set()
    assert await second == 4
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_batches_are_bounded() -> None:
    sizes: list[int] = []

    async def run(items: list[int]) -> list[int]:
        sizes.append(len(items))
        return items

    batcher: TickBatcher[int, int] = TickBatcher(run, operation="test", max_batch=3)
    assert await asyncio.gather(*(batcher.get(i) for i in range(7))) == list(range(7))
    assert sorted(sizes) == [1, 3, 3]


class BatchBroker:
    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.unsubscribed: list[str] = []
        self.gate: asyncio.Event | None = None

    async def subscribe(self, channel: str) -> None:
        await self.subscribe_many([channel])

    async def subscribe_many(self, channels: list[str]) -> None:
        self.batches.append(list(channels))
        if self.gate is not None:
            await self.gate.wait()

    async def unsubscribe(self, channel: str) -> None:
        self.unsubscribed.append(channel)


def make_hub(broker: BatchBroker) -> Hub:
    return Hub(keys=KEYS, broker=broker)


def sub() -> DeliveryQueue:
    return DeliveryQueue(maxlen=10, transport="sse")


async def test_new_channels_of_one_iteration_are_one_subscribe() -> None:
    broker = BatchBroker()
    hub = make_hub(broker)
    await asyncio.gather(*(hub.attach(f"pt_{i}", sub()) for i in range(50)))
    assert len(broker.batches) == 1
    assert sorted(broker.batches[0]) == sorted(f"u:patient:{{pt_{i}}}" for i in range(50))


async def test_attach_returns_only_once_the_channel_is_confirmed() -> None:
    broker = BatchBroker()
    broker.gate = asyncio.Event()
    hub = make_hub(broker)
    first = asyncio.create_task(hub.attach("pt_1", sub()))
    # A second queue of the same patient joining before the confirmation waits too.
    second = asyncio.create_task(hub.attach("pt_1", sub()))
    for _ in range(5):
        await asyncio.sleep(0)
    assert broker.batches == [["u:patient:{pt_1}"]]
    assert not first.done()
    assert not second.done()
    broker.gate.set()
    await asyncio.gather(first, second)


async def test_a_channel_left_before_its_subscribe_is_not_left_subscribed() -> None:
    broker = BatchBroker()
    broker.gate = asyncio.Event()
    hub = make_hub(broker)
    task = asyncio.create_task(hub.attach("pt_1", sub()))
    for _ in range(3):
        await asyncio.sleep(0)
    task.cancel()
    broker.gate.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(10):
        if broker.unsubscribed:
            break
        await asyncio.sleep(0)
    assert hub.channel_names == []
    assert broker.unsubscribed == ["u:patient:{pt_1}"]


async def test_a_failed_subscribe_fails_each_attach_and_forgets_the_channels() -> None:
    class BrokenBroker(BatchBroker):
        async def subscribe_many(self, channels: list[str]) -> None:
            raise RuntimeError("boom")

    hub = Hub(keys=KEYS, broker=BrokenBroker())
    results = await asyncio.gather(
        hub.attach("pt_1", sub()), hub.attach("pt_2", sub()), return_exceptions=True
    )
    assert all(isinstance(r, RuntimeError) for r in results)
    assert hub.channel_names == []
    assert hub.queues == frozenset()
