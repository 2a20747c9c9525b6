"""The hub without HTTP or Redis: fan-out, isolation of slow consumers, invalid
input, deduplication and backfill after a reconnect."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import pytest
from notify_publisher.events import MAX_EVENT_BYTES, EventStored
from notify_publisher.keys import RedisKeys

from service.fanout.closing import CloseReason
from service.fanout.hub import Hub
from service.fanout.queue import DeliveryQueue
from service.wire.sse import event_block
from service.wire.ws import delivery_text
from tests.support.events import event_dict, event_json
from tests.support.metrics import metric

KEYS = RedisKeys("u:")
Reader = Callable[[str, str], Awaitable[tuple[list[EventStored], bool, str | None]]]


class FakeBroker:
    def __init__(self) -> None:
        self.subscribed: list[str] = []
        self.unsubscribed: list[str] = []

    async def subscribe(self, channel: str) -> None:
        self.subscribed.append(channel)

    async def subscribe_many(self, channels: list[str]) -> None:
        self.subscribed.extend(channels)

    async def unsubscribe(self, channel: str) -> None:
        self.unsubscribed.append(channel)


@pytest.fixture
def broker() -> FakeBroker:
    return FakeBroker()


@pytest.fixture
def hub(broker: FakeBroker) -> Hub:
    return Hub(keys=KEYS, broker=broker)


class FakeHistory:
    """`HistoryReader.read_all_after` answering what `read` says."""

    def __init__(self, read: Reader) -> None:
        self.read = read

    async def read_all_after(
        self, patient_id: str, after_id: str
    ) -> tuple[list[EventStored], bool, str | None]:
        return await self.read(patient_id, after_id)


def sub(maxlen: int = 10, appointment_id: str | None = None) -> DeliveryQueue:
    return DeliveryQueue(maxlen=maxlen, transport="sse", appointment_id=appointment_id)


def counter(outcome: str) -> float:
    return float(metric("notify_events_received_total", outcome=outcome))


def with_id(event_id: str, patient_id: str = "pt_1", appointment_id: str = "ap_1") -> bytes:
    return json.dumps({"id": event_id, **event_dict(patient_id, appointment_id)}).encode()


async def test_channel_is_reference_counted(hub: Hub, broker: FakeBroker) -> None:
    first, second = sub(), sub()
    await hub.attach("pt_1", first)
    await hub.attach("pt_1", second)
    assert broker.subscribed == ["u:patient:{pt_1}"]
    await hub.detach("pt_1", first)
    assert broker.unsubscribed == []
    await hub.detach("pt_1", second)
    assert broker.unsubscribed == ["u:patient:{pt_1}"]
    assert hub.channel_names == []


async def test_event_encoded_once_and_shared(hub: Hub) -> None:
    a, b, other = sub(), sub(), sub()
    await hub.attach("pt_1", a)
    await hub.attach("pt_1", b)
    await hub.attach("pt_2", other)
    hub.on_message("u:patient:{pt_1}", event_json("pt_1").encode())
    (da,), (db,) = a.drain(), b.drain()
    assert da is db  # one Delivery object, one encoding, for every queue
    assert event_block(da).startswith(b"event: appointment.rescheduled\ndata: {")
    assert json.loads(delivery_text(da))["event"]["patient_id"] == "pt_1"
    assert event_block(db) is event_block(da)  # framed once, shared
    assert other.drain() == []


async def test_slow_consumer_is_closed_alone(hub: Hub) -> None:
    slow, fast = sub(maxlen=3), sub(maxlen=100)
    await hub.attach("pt_1", slow)
    await hub.attach("pt_1", fast)
    before = metric("notify_slow_consumers_total", transport="sse")
    for i in range(10):
        hub.on_message("u:patient:{pt_1}", with_id(f"1-{i}"))
    assert slow.close_reason is CloseReason.TOO_SLOW
    assert len(slow.drain()) == 3
    assert len(fast.drain()) == 10
    assert metric("notify_slow_consumers_total", transport="sse") == before + 1


def event_of_size(size: int) -> bytes:
    """A valid event for pt_1 padded in `data.note` to exactly `size` bytes."""
    empty = json.dumps(event_dict("pt_1", note="")).encode()
    raw = json.dumps(event_dict("pt_1", note="n" * (size - len(empty)))).encode()
    assert len(raw) == size
    return raw


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b'{"type": "appointment.exploded", "patient_id": "pt_1"}',
        json.dumps({**event_dict("pt_1"), "surprise": 1}).encode(),
        json.dumps(event_dict("pt_1", starts_at="2026-12-01T15:00:00Z")).encode(),
        # A valid event for pt_2 published on pt_1's channel must not reach pt_1.
        event_json("pt_2").encode(),
        b"x" * 70_000,
        # Lax coercion would read these as Unix time: 1970-01-01T00:00:00Z.
        json.dumps(event_dict("pt_1", starts_at=0)).encode(),
        json.dumps({**event_dict("pt_1"), "occurred_at": "1700000000"}).encode(),
        json.dumps({**event_dict("pt_1"), "patient_id": 1}).encode(),
        json.dumps(event_dict("pt_1", status=1)).encode(),
        # Valid in every other respect, one byte over the limit.
        event_of_size(MAX_EVENT_BYTES + 1),
    ],
    ids=[
        "garbage",
        "unknown-type",
        "extra-field",
        "rule",
        "wrong-channel",
        "too-large",
        "integer-time",
        "numeric-string-time",
        "integer-id",
        "integer-status",
        "valid-but-over-the-limit",
    ],
)
async def test_invalid_events_are_dropped_and_counted(hub: Hub, raw: bytes) -> None:
    s = sub()
    await hub.attach("pt_1", s)
    before = counter("invalid")
    hub.on_message("u:patient:{pt_1}", raw)
    assert s.drain() == []
    assert counter("invalid") == before + 1

    hub.on_message("u:patient:{pt_1}", event_json("pt_1").encode())
    assert len(s.drain()) == 1


async def test_an_event_at_the_limit_is_delivered(hub: Hub) -> None:
    s = sub()
    await hub.attach("pt_1", s)
    over = event_of_size(MAX_EVENT_BYTES + 1)
    EventStored.model_validate_json(over)  # the case above fails on size alone
    hub.on_message("u:patient:{pt_1}", event_of_size(MAX_EVENT_BYTES))
    assert len(s.drain()) == 1


async def test_appointment_filter(hub: Hub) -> None:
    only_ap2 = sub(appointment_id="ap_2")
    await hub.attach("pt_1", only_ap2)
    hub.on_message("u:patient:{pt_1}", event_json("pt_1", "ap_1").encode())
    hub.on_message("u:patient:{pt_1}", event_json("pt_1", "ap_2").encode())
    assert [d.appointment_id for d in only_ap2.drain()] == ["ap_2"]


async def test_duplicates_by_id_are_dropped(hub: Hub) -> None:
    s = sub()
    await hub.attach("pt_1", s)
    hub.on_message("u:patient:{pt_1}", with_id("5-0"))
    hub.on_message("u:patient:{pt_1}", with_id("5-0"))
    hub.on_message("u:patient:{pt_1}", with_id("4-9"))
    hub.on_message("u:patient:{pt_1}", with_id("5-1"))
    assert [d.id for d in s.drain()] == ["5-0", "5-1"]


async def test_replayed_ids_are_skipped_once(hub: Hub) -> None:
    s = sub()
    await hub.attach("pt_1", s)
    for i in range(4):
        hub.on_message("u:patient:{pt_1}", with_id(f"7-{i}"))
    s.skip_through = (7, 1)
    assert [d.id for d in s.drain()] == ["7-2", "7-3"]
    assert s.skip_through is None


async def test_backfill_replays_missed_events_in_order(hub: Hub) -> None:
    s = sub()
    await hub.attach("pt_1", s)
    hub.on_message("u:patient:{pt_1}", with_id("10-0"))
    missed = [EventStored.model_validate_json(with_id(f"10-{i}")) for i in (1, 2, 3)]
    calls: list[tuple[str, str]] = []

    async def reader(pid: str, after: str) -> tuple[list[EventStored], bool, str | None]:
        calls.append((pid, after))
        # A live message arriving during the backfill waits behind it.
        hub.on_message("u:patient:{pt_1}", with_id("10-3"))
        hub.on_message("u:patient:{pt_1}", with_id("10-4"))
        return missed, False, "10-0"

    hub.history = FakeHistory(reader)
    await hub.backfill()
    assert calls == [("pt_1", "10-0")]
    assert [d.id for d in s.drain()] == ["10-0", "10-1", "10-2", "10-3", "10-4"]


async def test_backfill_reports_gap(hub: Hub) -> None:
    s = sub()
    await hub.attach("pt_1", s)
    hub.on_message("u:patient:{pt_1}", with_id("10-0"))

    async def reader(pid: str, after: str) -> tuple[list[EventStored], bool, str | None]:
        return [], True, None

    hub.history = FakeHistory(reader)
    await hub.backfill()
    kinds = [d.kind for d in s.drain()]
    assert kinds == ["appointment.rescheduled", "gap"]


async def test_overlapping_backfills_hold_live_messages_until_the_last_one_ends(
    hub: Hub,
) -> None:
    s = sub()
    await hub.attach("pt_1", s)
    hub.on_message("u:patient:{pt_1}", with_id("10-0"))
    gate = asyncio.Event()

    async def reader(pid: str, after: str) -> tuple[list[EventStored], bool, str | None]:
        await gate.wait()
        return [EventStored.model_validate_json(with_id("10-1"))], False, "10-0"

    hub.history = FakeHistory(reader)
    # A listener reconnect and a Cluster shard's resync of the same channel.
    first = hub.begin_backfill(None)
    second = hub.begin_backfill(["u:patient:{pt_1}"])
    hub.on_message("u:patient:{pt_1}", with_id("10-2"))
    gate.set()
    await hub.finish_backfill(first)
    # The second backfill still holds the channel: the live message waits.
    assert [d.id for d in s.drain()] == ["10-0", "10-1"]
    await hub.finish_backfill(second)
    assert [d.id for d in s.drain()] == ["10-2"]


async def test_released_backfill_lets_held_messages_go(hub: Hub) -> None:
    s = sub()
    await hub.attach("pt_1", s)
    hub.history = FakeHistory(lambda _p, _a: asyncio.sleep(0, ([], False, None)))
    held = hub.begin_backfill(None)
    hub.on_message("u:patient:{pt_1}", with_id("11-0"))
    assert len(s) == 0
    hub.release_backfill(held)
    assert [d.id for d in s.drain()] == ["11-0"]


async def test_close_where_matches_predicate(hub: Hub) -> None:
    a, b = sub(), sub()
    await hub.attach("pt_1", a)
    await hub.attach("pt_2", b)
    assert hub.close_where(lambda s: s is a, CloseReason.REVOKED) == 1
    assert a.close_reason is CloseReason.REVOKED
    assert b.close_reason is None


async def test_an_idle_stream_keeps_no_lists_in_the_hub_or_its_queue(hub: Hub) -> None:
    """Issue 23's idle memory: a channel's queues are one list (not a set), its
    held-back messages exist only while a backfill holds it, and an empty queue
    keeps no item list; all of it behaves as before."""
    alone, first, second = sub(), sub(), sub()
    await hub.attach("pt_1", alone)
    await hub.attach("pt_2", first)
    await hub.attach("pt_2", second)
    channel = hub._channels["u:patient:{pt_1}"]
    assert channel.queues == [alone]
    assert channel.pending is None
    assert alone._items is None
    assert len(alone) == 0
    assert alone.drain() == []
    hub.on_message("u:patient:{pt_1}", with_id("12-0"))
    assert len(alone) == 1
    assert [d.id for d in alone.drain()] == ["12-0"]
    assert alone._items is None  # drained: no list kept
    hub.history = FakeHistory(lambda _p, _a: asyncio.sleep(0, ([], False, None)))
    held = hub.begin_backfill(None)
    hub.on_message("u:patient:{pt_1}", with_id("12-1"))
    assert channel.pending is not None
    hub.release_backfill(held)
    assert channel.pending is None
    assert [d.id for d in alone.drain()] == ["12-1"]
    # Leaving: the other queue of a shared channel stays; a queue that is not
    # (or no longer) there is ignored.
    await hub.detach("pt_2", first)
    await hub.detach("pt_2", first)
    assert hub._channels["u:patient:{pt_2}"].queues == [second]
    hub.on_message("u:patient:{pt_2}", with_id("12-2", patient_id="pt_2"))
    assert [d.id for d in second.drain()] == ["12-2"]
    assert first.drain() == []
