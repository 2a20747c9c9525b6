"""One ticker keeps every SSE stream alive: heartbeats for idle streams, an abort
for a writer stuck in one send."""

from __future__ import annotations

import asyncio
import weakref

from service.fanout.keepalive import KeepAlive, SendWatch
from service.fanout.queue import DeliveryQueue


class Stream:
    """A writer (watched for stalls) that takes its own heartbeats, for brevity;
    in the service the subscription takes them (see the last test)."""

    def __init__(self) -> None:
        self.next_heartbeat = 0.0
        self.send_started = 0.0
        self.beats = 0
        self.aborted = False

    def heartbeat(self) -> None:
        self.beats += 1

    def abort(self) -> None:
        self.aborted = True


def keep(keepalive: KeepAlive, stream: Stream) -> None:
    keepalive.add(stream, heartbeats=stream)


def test_idle_streams_beat_once_per_period() -> None:
    keepalive = KeepAlive(heartbeat_s=10, send_timeout_s=30)
    idle, busy = Stream(), Stream()
    keep(keepalive, idle)
    keep(keepalive, busy)
    start = idle.next_heartbeat - 10
    keepalive.tick(start + 5)
    assert idle.beats == 0
    busy.next_heartbeat = start + 19  # it wrote at +9: its next beat moved
    keepalive.tick(start + 10.5)
    assert (idle.beats, busy.beats) == (1, 0)
    keepalive.tick(start + 15)
    assert idle.beats == 1
    keepalive.tick(start + 21)
    assert (idle.beats, busy.beats) == (2, 1)


def test_stalled_writer_is_aborted_once() -> None:
    keepalive = KeepAlive(heartbeat_s=10, send_timeout_s=30)
    stalled = Stream()
    keep(keepalive, stalled)
    stalled.send_started = 100.0
    keepalive.tick(120)
    assert not stalled.aborted
    keepalive.tick(131)
    assert stalled.aborted
    stalled.aborted = False
    keepalive.tick(200)
    assert not stalled.aborted  # dropped from the ticker after its abort
    assert stalled.beats == 0


def test_heartbeats_stay_spread_as_the_streams_are() -> None:
    """Each tick hands out only the heartbeats due by then, not a second's worth."""
    keepalive = KeepAlive(heartbeat_s=10, send_timeout_s=30)
    streams = [Stream() for _ in range(100)]
    for stream in streams:
        keep(keepalive, stream)
    start = streams[0].next_heartbeat - 10
    for i, stream in enumerate(streams):
        stream.next_heartbeat = start + 10 + i * 0.1  # their last writes were spread
    keepalive.tick(start + 10.05)
    assert sum(s.beats for s in streams) == 1
    keepalive.tick(start + 12.05)
    assert sum(s.beats for s in streams) == 21
    keepalive.discard(streams[50])
    keepalive.tick(start + 20)
    assert streams[50].beats == 0
    assert sum(s.beats for s in streams) == 99


def test_a_discarded_stream_is_released_at_once() -> None:
    """The heap must not keep a closed stream (and all it references) alive until
    its slot comes up, nor forever for a stream that takes no heartbeats."""
    keepalive = KeepAlive(heartbeat_s=10, send_timeout_s=30)
    beating, silent = Stream(), Stream()
    keep(keepalive, beating)
    keepalive.add(silent)
    refs = weakref.ref(beating), weakref.ref(silent)
    keepalive.tick(beating.next_heartbeat + 1)
    assert (beating.beats, silent.beats) == (1, 0)
    keepalive.discard(beating)
    keepalive.discard(silent)
    del beating, silent
    assert [ref() for ref in refs] == [None, None]


def test_a_stream_without_heartbeats_is_still_watched_for_stalls() -> None:
    keepalive = KeepAlive(heartbeat_s=10, send_timeout_s=30)
    stalled = Stream()
    keepalive.add(stalled)
    stalled.send_started = 100.0
    keepalive.tick(131)
    assert stalled.aborted
    assert stalled.beats == 0


async def test_the_heartbeat_wakes_the_subscription_not_the_writer() -> None:
    """One way: the ticker wakes the stream's subscription (as a delivery would);
    its writer then sends the keep-alive. A write pushes the next one back."""
    keepalive = KeepAlive(heartbeat_s=10, send_timeout_s=30)
    watch, subscription = SendWatch(), DeliveryQueue(maxlen=4, transport="sse")
    keepalive.add(watch, heartbeats=subscription)
    due = subscription.next_heartbeat
    subscription.next_heartbeat = due + 5  # its stream wrote meanwhile
    keepalive.tick(due + 1)
    assert not subscription.heartbeat_due
    keepalive.tick(due + 6)
    assert subscription.heartbeat_due
    await asyncio.wait_for(subscription.wait(), 1)
    assert subscription.drain() == []
    keepalive.discard(watch)
    subscription.heartbeat_due = False
    keepalive.tick(due + 100)
    assert not subscription.heartbeat_due
