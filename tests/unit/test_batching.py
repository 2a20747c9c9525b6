"""Coalescing per loop iteration (issues 15 and 23): one broker call for the reads
(of every kind) and the subscriptions of many connections, each caller still
getting its own answer, and a failure reaching only the callers it concerns."""

from __future__ import annotations

import asyncio
from typing import TypeVar

import pytest
from notify_publisher.keys import RedisKeys

from service.brokers.base import HistoryPage, HistoryRead, ReadBatch, ReadReplies
from service.brokers.cluster import ClusterBroker
from service.brokers.memory import MemoryBroker
from service.brokers.redis import RedisBroker
from service.fanout.hub import Hub
from service.fanout.queue import DeliveryQueue
from service.services.batching import TickReads
from service.services.history import HistoryReader

T = TypeVar("T")

KEYS = RedisKeys("u:")


def page_of(read: HistoryRead) -> HistoryPage:
    return HistoryPage(entries=[], exists=True, first_id=read.after_id, last_id=read.history_key)


class FakeRedis:
    """`read_batch` over a dict; a key or history key in `refuse` fails its read alone."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values
        self.calls: list[ReadBatch] = []
        self.fail: Exception | None = None
        self.refuse: set[str] = set()

    def _answer(self, key: str, value: T) -> T | Exception:
        return RuntimeError(f"refused {key}") if key in self.refuse else value

    async def read_batch(self, batch: ReadBatch) -> ReadReplies:
        self.calls.append(batch)
        await asyncio.sleep(0)
        if self.fail is not None:
            raise self.fail
        return ReadReplies(
            values=[self._answer(k, self.values.get(k)) for k in batch.keys],
            heads=[self._answer(k, self.values.get(k)) for k in batch.heads],
            pages=[self._answer(r.history_key, page_of(r)) for r in batch.pages],
        )


def read(key: str) -> HistoryRead:
    return HistoryRead(history_key=key, after_id="1-0", count=10)


async def test_reads_of_one_iteration_of_every_kind_share_one_call() -> None:
    redis = FakeRedis({"a": "1", "c": "3", "h": "9-0"})
    reads = TickReads(redis.read_batch)
    answers = await asyncio.gather(
        reads.get_values("a", "b"),
        reads.head("h"),
        reads.get_values("c"),
        reads.page(read("p")),
        reads.get_values("a"),
        reads.head("empty"),
    )
    assert list(answers) == [["1", None], "9-0", ["3"], page_of(read("p")), ["1"], None]
    assert len(redis.calls) == 1
    assert sorted(redis.calls[0].keys) == ["a", "b", "c"]  # each key once
    assert redis.calls[0].heads == ["h", "empty"]
    assert redis.calls[0].pages == [read("p")]
    assert reads.largest_batch == 3


async def test_a_value_written_between_batches_is_seen_by_the_next() -> None:
    redis = FakeRedis({})
    reads = TickReads(redis.read_batch)
    assert await reads.get_values("k") == [None]
    redis.values["k"] = "revoked"
    assert await reads.get_values("k") == ["revoked"]
    assert len(redis.calls) == 2


async def test_a_failed_call_fails_every_caller_of_it_and_no_later_one() -> None:
    redis = FakeRedis({"a": "1"})
    redis.fail = ConnectionError("down")
    reads = TickReads(redis.read_batch)
    results = await asyncio.gather(
        reads.get_values("a"), reads.head("h"), reads.page(read("p")), return_exceptions=True
    )
    assert all(isinstance(r, ConnectionError) for r in results)
    redis.fail = None
    assert await reads.get_values("a") == ["1"]


async def test_a_failed_read_fails_only_its_callers() -> None:
    redis = FakeRedis({"a": "1", "h": "9-0"})
    redis.refuse = {"bad", "bad-head", "bad-page"}
    reads = TickReads(redis.read_batch)
    results = await asyncio.gather(
        reads.get_values("a"),
        reads.get_values("a", "bad"),
        reads.head("h"),
        reads.head("bad-head"),
        reads.page(read("p")),
        reads.page(read("bad-page")),
        return_exceptions=True,
    )
    assert len(redis.calls) == 1
    assert results[0] == ["1"]
    assert results[2] == "9-0"
    assert results[4] == page_of(read("p"))
    assert [str(r) for r in results[1::2]] == [
        "refused bad",
        "refused bad-head",
        "refused bad-page",
    ]


async def test_errors_of_one_chunk_reach_only_its_callers() -> None:
    calls = 0

    async def first_fails(batch: ReadBatch) -> ReadReplies:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("down")
        return ReadReplies(values=list(batch.keys), heads=[], pages=[])

    reads = TickReads(first_fails, max_batch=2)
    results = await asyncio.gather(
        *(reads.get_values(f"k{i}") for i in range(4)), return_exceptions=True
    )
    assert calls == 2
    assert [isinstance(r, ConnectionError) for r in results] == [True, True, False, False]
    assert results[2:] == [["k2"], ["k3"]]


async def test_a_cancelled_caller_does_not_cancel_the_others() -> None:
    release = asyncio.Event()

    async def slow(batch: ReadBatch) -> ReadReplies:
        await release.wait()
        return ReadReplies(values=[k * 2 for k in batch.keys], heads=[], pages=[])

    reads = TickReads(slow)
    first = asyncio.create_task(reads.get_values("a"))
    second = asyncio.create_task(reads.get_values("b"))
    await asyncio.sleep(0)
    first.cancel()
    release.set()
    assert await second == ["bb"]
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_batches_are_bounded() -> None:
    sizes: list[tuple[int, int, int]] = []

    async def run(batch: ReadBatch) -> ReadReplies:
        sizes.append((len(batch.keys), len(batch.heads), len(batch.pages)))
        return ReadReplies(
            values=list(batch.keys),
            heads=list(batch.heads),
            pages=[page_of(r) for r in batch.pages],
        )

    reads = TickReads(run, max_batch=3)
    answers = await asyncio.gather(
        *(reads.get_values(str(i)) for i in range(7)), *(reads.head(f"h{i}") for i in range(4))
    )
    assert answers == [[str(i)] for i in range(7)] + [f"h{i}" for i in range(4)]
    assert sorted(sizes) == [(1, 0, 0), (3, 1, 0), (3, 3, 0)]


async def test_the_default_read_batch_fails_one_kind_only() -> None:
    """Brokers without a pipeline of everything (memory, Cluster) answer per kind."""
    broker = MemoryBroker(control_channel=KEYS.control)
    await broker.set_value("k", "v", ttl_s=60)

    async def no_heads(history_keys: list[str]) -> list[str | None]:
        raise ConnectionError("down")

    broker.read_heads = no_heads  # type: ignore[method-assign]
    replies = await broker.read_batch(ReadBatch(keys=["k", "x"], heads=["h1", "h2"], pages=[]))
    assert replies.values == ["v", None]
    assert [type(h) for h in replies.heads] == [ConnectionError, ConnectionError]


async def test_without_one_round_trip_each_kind_is_answered_on_its_own() -> None:
    """Where a broker cannot send every kind in one round trip, a ticket or
    revocation check does not wait for the history pages of its iteration."""
    pages_go = asyncio.Event()
    calls: list[ReadBatch] = []

    async def per_kind(batch: ReadBatch) -> ReadReplies:
        calls.append(batch)
        if batch.pages:
            await pages_go.wait()
        return ReadReplies(
            values=[k * 2 for k in batch.keys],
            heads=[f"{k}-head" for k in batch.heads],
            pages=[page_of(r) for r in batch.pages],
        )

    reads = TickReads(per_kind, one_round_trip=False)
    page = asyncio.create_task(reads.page(read("p")))
    values = asyncio.create_task(reads.get_values("a"))
    head = asyncio.create_task(reads.head("h"))
    assert await values == ["aa"]
    assert await head == "h-head"
    assert not page.done()
    pages_go.set()
    assert await page == page_of(read("p"))
    kinds = sorted((len(c.keys), len(c.heads), len(c.pages)) for c in calls)
    assert kinds == [(0, 0, 1), (0, 1, 0), (1, 0, 0)]


async def test_the_history_reader_reads_per_kind_where_the_broker_must() -> None:
    """The memory broker (like Cluster) answers per kind: the shared `TickReads`
    does not hold a check back for a slow page."""
    broker = MemoryBroker(control_channel=KEYS.control)
    await broker.set_value("k", "v", ttl_s=60)
    history = HistoryReader(broker=broker, keys=KEYS, page_size=10)
    pages_go = asyncio.Event()
    read_histories = broker.read_histories

    async def slow_pages(requests: list[HistoryRead]) -> list[HistoryPage]:
        await pages_go.wait()
        return await read_histories(requests)

    broker.read_histories = slow_pages  # type: ignore[method-assign]
    page = asyncio.create_task(history.reads.page(read(KEYS.history("pt_1"))))
    assert await history.reads.get_values("k") == ["v"]
    assert not page.done()
    pages_go.set()
    assert (await page).entries == []
    assert not MemoryBroker.reads_in_one_round_trip
    assert RedisBroker.reads_in_one_round_trip
    assert not ClusterBroker.reads_in_one_round_trip


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
