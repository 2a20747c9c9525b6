"""`service/transports/writes.py`: the streams woken in one loop iteration are
written by one callback at its end, which reads the clock once and counts the
deliveries once, exactly, whatever each stream wrote; and what an SSE stream
writes in it (`SseStream.write_due`)."""

from __future__ import annotations

import asyncio
from typing import cast

import structlog
import structlog.testing

from service.fanout.clock import Clock
from service.fanout.connection import SseConnection
from service.fanout.queue import Delivery, DeliveryQueue
from service.transports.http_protocol import Taken
from service.transports.sse_stream import SseStream
from service.transports.writes import Writes
from service.wire.sse import chunk, event_block, event_chunk
from tests.support.metrics import metric


class Tally:
    def __init__(self) -> None:
        self.incs: list[float] = []

    def inc(self, amount: float = 1) -> None:
        self.incs.append(amount)


class Stream:
    def __init__(self, writes: Writes, delivered: int, *, fails: bool = False) -> None:
        self.writes = writes
        self.delivered = delivered
        self.fails = fails
        self.seen: list[float] = []
        self.wake_next: Stream | None = None

    def write_due(self, now: float) -> int:
        self.seen.append(now)
        if self.wake_next is not None:
            # Woken during the flush (a stream's end wakes another): next flush.
            self.writes.add(self.wake_next)
            self.wake_next = None
        if self.fails:
            raise RuntimeError("boom")
        return self.delivered


async def flushed() -> None:
    """One loop iteration: the flush scheduled by `add` has run."""
    await asyncio.sleep(0)


async def test_one_flush_per_iteration_one_clock_reading_one_count() -> None:
    tally = Tally()
    writes = Writes(tally)
    streams = [Stream(writes, n) for n in (1, 0, 3, 1)]
    for stream in streams:
        writes.add(stream)
    assert all(not s.seen for s in streams)  # at the end of the iteration, not at once
    await flushed()
    assert [len(s.seen) for s in streams] == [1, 1, 1, 1]
    assert len({s.seen[0] for s in streams}) == 1  # the clock read once for all
    assert tally.incs == [5]  # one count for the whole flush


async def test_nothing_written_counts_nothing() -> None:
    tally = Tally()
    writes = Writes(tally)
    writes.add(Stream(writes, 0))
    await flushed()
    assert tally.incs == []


async def test_a_stream_woken_during_a_flush_is_written_by_the_next_one() -> None:
    tally = Tally()
    writes = Writes(tally)
    first, later = Stream(writes, 1), Stream(writes, 2)
    first.wake_next = later
    writes.add(first)
    await flushed()
    assert later.seen == []
    assert tally.incs == [1]
    await flushed()
    assert len(later.seen) == 1
    assert later.seen[0] >= first.seen[0]
    assert tally.incs == [1, 2]


async def test_a_failing_stream_leaves_the_others_written_and_counted() -> None:
    """An error escaping one stream's write is logged; the streams after it in
    the same flush are still written, and everything written is counted."""
    tally = Tally()
    writes = Writes(tally)
    streams = [Stream(writes, 2), Stream(writes, 1, fails=True), Stream(writes, 3)]
    for stream in streams:
        writes.add(stream)
    with structlog.testing.capture_logs() as logs:
        await flushed()
    assert [len(s.seen) for s in streams] == [1, 1, 1]
    assert tally.incs == [5]
    assert [line["event"] for line in logs] == ["stream_write_failed"]
    assert logs[0]["log_level"] == "error"
    # Nothing is left marked due: the next wake-up flushes again.
    writes.add(streams[2])
    await flushed()
    assert len(streams[2].seen) == 2


# --- the SSE stream's write: each stream gets exactly its own deliveries -----------


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return False


class FakeClock:
    heartbeat_s = 15.0
    send_timeout_s = 10.0

    def add(self, watch: object, *, heartbeats: object = None) -> None: ...

    def discard(self, owner: object) -> None: ...


class FakeConnection:
    def __init__(self) -> None:
        self.queue = DeliveryQueue(maxlen=8, transport="sse")


def live_stream(*, chunked: bool = True) -> tuple[DeliveryQueue, FakeTransport]:
    connection = FakeConnection()
    stream = SseStream(
        connection=cast(SseConnection, connection),
        clock=cast(Clock, FakeClock()),
        retry_ms=3000,
        resume_from=None,
    )
    transport = FakeTransport()
    taken = Taken(
        cast(asyncio.Transport, transport), chunked=chunked, write_paused=False, connections=set()
    )
    stream.take(taken, request_id=None)
    return connection.queue, transport


def delivery(n: int) -> Delivery:
    return Delivery(kind="appointment.updated", payload=f'{{"n":{n}}}', event_id=f"{n}-0")


async def test_streams_of_one_flush_each_write_exactly_their_own_deliveries() -> None:
    """Streams that drain the same deliveries share one framed chunk; a stream
    with other deliveries (fewer, more, another order, not chunked) still gets its
    own bytes; `notify_deliveries_total` moves by what was written, once."""
    one, two, three = delivery(1), delivery(2), delivery(3)
    plans = {
        "same_a": [one, two],
        "same_b": [one, two],
        "alone": [one],
        "longer": [one, two, three],
        "reordered": [two, one],
        "same_c": [one, two],
    }
    streams = {name: live_stream() for name in plans}
    plain_queue, plain = live_stream(chunked=False)
    before = metric("notify_deliveries_total", transport="sse")
    for name, items in plans.items():
        queue, _ = streams[name]
        for item in items:
            assert queue.put_nowait(item)
    plain_queue.put_nowait(one)
    plain_queue.put_nowait(two)
    await asyncio.sleep(0)
    for name, items in plans.items():
        _, transport = streams[name]
        assert transport.written == [chunk(b"".join(event_block(i) for i in items))], name
    assert streams["alone"][1].written == [event_chunk(one)]
    assert plain.written == [event_block(one) + event_block(two)]
    # Written once per stream: the next flush has nothing to write.
    for queue, _ in streams.values():
        assert len(queue) == 0
    counted = sum(len(items) for items in plans.values()) + 2
    assert metric("notify_deliveries_total", transport="sse") == before + counted
