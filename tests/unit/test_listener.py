"""The one-way hand-over from the broker to the hub: the broker's inbox (bounded,
never waits) and the hub's listener that pulls it, routes control messages, and
holds a channel's live messages behind its backfill."""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import pytest
from notify_publisher.events import EventStored
from notify_publisher.keys import RedisKeys
from notify_publisher.topology import RedisMode
from redis.asyncio import Redis

from service.brokers.base import Inbox, Resync
from service.brokers.memory import MemoryBroker
from service.brokers.redis import RedisBroker
from service.fanout.closing import CloseReason
from service.fanout.hub import Hub
from service.fanout.listener import HubListener
from service.fanout.queue import DeliveryQueue
from service.services.principal import Principal, Role
from tests.support.events import event_dict
from tests.support.metrics import metric
from tests.support.waiting import eventually

KEYS = RedisKeys("u:")
CHANNEL = KEYS.patient_channel("pt_1")


def with_id(event_id: str) -> bytes:
    return json.dumps({"id": event_id, **event_dict("pt_1", "ap_1")}).encode()


class GatedHistory:
    """History that answers `events` once `gate` is set."""

    def __init__(self, *events: str) -> None:
        self.gate = asyncio.Event()
        self.events = [EventStored.model_validate_json(with_id(i)) for i in events]
        self.reads: list[str] = []

    async def read_all_after(
        self, patient_id: str, after_id: str
    ) -> tuple[list[EventStored], bool, str | None]:
        self.reads.append(after_id)
        await self.gate.wait()
        return self.events, False, None


class Running:
    def __init__(self, broker: MemoryBroker, hub: Hub, history: GatedHistory) -> None:
        self.broker = broker
        self.hub = hub
        self.history = history
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(
            HubListener(broker=self.broker, hub=self.hub, keys=KEYS).run()
        )

    async def stop(self) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    broker = MemoryBroker(control_channel=KEYS.control)
    await broker.start()
    history = GatedHistory("20-1")
    parts = Running(broker, Hub(keys=KEYS, broker=broker, history=history), history)
    parts.start()
    yield parts
    await parts.stop()
    await broker.stop()


def test_inbox_overflow_drops_counts_and_asks_for_a_full_resync() -> None:
    inbox = Inbox(limit=2)
    before = float(metric("notify_events_received_total", outcome="overflow"))
    inbox.put_message("a", b"1")
    inbox.put_message("a", b"2")
    inbox.put_message("a", b"3")
    assert float(metric("notify_events_received_total", outcome="overflow")) == before + 1
    taken = asyncio.run(inbox.take())
    assert taken == [("a", b"1"), ("a", b"2"), Resync(None, sweep=True)]
    # A resync is never dropped, even into a full inbox.
    inbox.put_message("a", b"4")
    inbox.put_message("a", b"5")
    inbox.put_resync(["a"], sweep=False)
    assert asyncio.run(inbox.take())[-1] == Resync(("a",), sweep=False)


async def attached_with_a_live_message(running: Running) -> DeliveryQueue:
    """A queue attached to pt_1 that has received one message through the
    listener (20-0) and has been drained."""
    s = DeliveryQueue(maxlen=10, transport="sse")
    await running.hub.attach("pt_1", s)
    await running.broker.publish_raw(CHANNEL, with_id("20-0").decode())
    await asyncio.wait_for(s.wait(), 5)
    assert [d.id for d in s.drain()] == ["20-0"]
    return s


async def test_messages_published_reach_queues_through_the_listener(
    running: Running,
) -> None:
    await attached_with_a_live_message(running)


async def test_a_resync_holds_later_messages_until_its_backfill_is_done(
    running: Running,
) -> None:
    s = await attached_with_a_live_message(running)
    # The connection came back: a resync, then a live message read after it.
    running.broker.inbox.put_resync(None, sweep=False)
    await running.broker.publish_raw(CHANNEL, with_id("20-2").decode())
    await eventually(lambda: running.history.reads == ["20-0"], what="the backfill read")
    # Taken by the listener, but held behind the backfill.
    await eventually(lambda: len(running.broker.inbox) == 0, what="the inbox taken")
    assert len(s) == 0
    running.history.gate.set()
    await eventually(lambda: len(s) == 2, what="the backfill and the held message")
    assert [d.id for d in s.drain()] == ["20-1", "20-2"]


async def test_control_messages_go_to_the_control_handler(running: Running) -> None:
    principal = Principal(
        sub="pt_1",
        role=Role.PATIENT,
        jti="j1",
        expires_at=time.time() + 600,
        issued_at=1000.0,
    )
    s = DeliveryQueue(maxlen=10, transport="sse", principal=principal)
    await running.hub.attach("pt_1", s)
    await running.broker.publish_raw(KEYS.control, json.dumps({"type": "revoked", "jti": "j1"}))
    await eventually(lambda: s.close_reason is not None, what="the revocation")
    assert s.close_reason is CloseReason.REVOKED


async def test_stopped_mid_backfill_releases_and_queues_a_full_resync(
    running: Running,
) -> None:
    s = DeliveryQueue(maxlen=10, transport="sse")
    await running.hub.attach("pt_1", s)
    running.broker.inbox.put_resync(None, sweep=False)
    await running.broker.publish_raw(CHANNEL, with_id("20-2").decode())
    await eventually(lambda: running.history.reads != [], what="the backfill read")
    await eventually(lambda: len(running.broker.inbox) == 0, what="the inbox taken")
    await running.stop()
    # Nothing stays held for good, and the next run starts with a full resync.
    assert [d.id for d in s.drain()] == ["20-2"]
    assert await running.broker.inbox.take() == [Resync(None, sweep=True)]
    running.start()


class ScriptedPubSub:
    """A pub/sub connection that answers with `replies`, in order."""

    def __init__(self, *replies: dict[str, Any]) -> None:
        self.replies = deque(replies)
        self.subscribed: list[str] = []

    async def subscribe(self, *channels: str) -> None:
        self.subscribed.extend(channels)

    async def get_message(self, timeout: float) -> dict[str, Any] | None:  # noqa: ASYNC109
        return self.replies.popleft() if self.replies else None


@pytest.mark.parametrize("resync", [False, True])
async def test_a_reconnect_drops_messages_read_before_its_confirmations(resync: bool) -> None:
    """On a reconnect every channel is backfilled right after its SUBSCRIBE is
    confirmed; a message taken before the `Resync` would move the channel's last
    id past the events the backfill must read, so it is left to the backfill.
    (The first connect has nothing to backfill: it keeps them.)"""
    broker = RedisBroker(
        client=Redis(),
        pubsub_client=Redis(),
        control_channel=KEYS.control,
        mode=RedisMode.STANDALONE,
        where="test",
    )
    await broker.subscribe(CHANNEL)  # no connection yet: left to the (re)connect
    pubsub = ScriptedPubSub(
        {"type": "message", "channel": CHANNEL.encode(), "data": with_id("30-5")},
        {"type": "subscribe", "channel": KEYS.control.encode(), "data": 1},
        {"type": "subscribe", "channel": CHANNEL.encode(), "data": 2},
    )
    await broker._subscribe_all(pubsub, resync=resync)  # type: ignore[arg-type]
    assert pubsub.subscribed == [KEYS.control, CHANNEL]
    assert len(broker.inbox) == (0 if resync else 1)
