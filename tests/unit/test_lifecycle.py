"""The shared lifecycle of a stream, on the memory broker (no HTTP, no Redis):
an SSE connection's admission, its subscription taken with `async with`, replay
then live without duplicates, the token's expiry, and one log pair whatever ends
it."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import time
import weakref
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass

import pytest
from notify_publisher.events import EventCreate
from notify_publisher.keys import RedisKeys
from structlog.testing import capture_logs

from service.brokers.memory import MemoryBroker
from service.fanout.clock import Clock
from service.fanout.closing import CloseReason
from service.fanout.connection import SseConnection
from service.fanout.hub import Hub
from service.fanout.listener import HubListener
from service.fanout.subscription import Replay, reason_for
from service.services.channels import StreamScope
from service.services.errors import BrokerUnavailableError
from service.services.history import EMPTY_HISTORY_ID, HistoryReader
from service.services.limits import ConnectionLimiter, Limit
from service.services.principal import Principal, Role
from service.services.publisher import publish
from service.transports.http_protocol import Taken
from service.transports.sse_stream import SSE_SLOW, SseStream
from tests.support.events import event_dict
from tests.support.transport import RecordingTransport
from tests.support.waiting import eventually

KEYS = RedisKeys("u:")
WAIT_S = 10.0


@dataclass
class Parts:
    broker: MemoryBroker
    hub: Hub
    history: HistoryReader
    limiter: ConnectionLimiter
    clock: Clock

    def connection(
        self, sub: str = "pt_1", *, expires_at: float = 0.0, queue_max: int = 10
    ) -> SseConnection:
        return SseConnection(
            hub=self.hub,
            history=self.history,
            limiter=self.limiter,
            principal=Principal(sub=sub, role=Role.PATIENT, expires_at=expires_at),
            scope=StreamScope(patient_id=sub, appointment_id=None),
            queue_max=queue_max,
            route="/v1/patients/me/events",
            clock=self.clock,
        )

    async def publish(self, patient_id: str = "pt_1") -> str:
        stored = await publish(
            broker=self.broker,
            keys=KEYS,
            event=EventCreate.model_validate(event_dict(patient_id)),
            history_maxlen=100,
            history_ttl_s=3600,
        )
        assert stored.event.id is not None
        return stored.event.id


@pytest.fixture
async def parts() -> AsyncIterator[Parts]:
    broker = MemoryBroker(control_channel=KEYS.control)
    history = HistoryReader(broker=broker, keys=KEYS, page_size=2)
    hub = Hub(keys=KEYS, broker=broker, history=history)
    await broker.start()
    # The hub's listener pulls what the broker receives, as under the lifespan.
    listener = asyncio.get_running_loop().create_task(
        HubListener(broker=broker, hub=hub, keys=KEYS).run()
    )
    # The process' clock, running as under the lifespan (token expiry).
    clock = Clock(heartbeat_s=15, send_timeout_s=30)
    ticking = asyncio.get_running_loop().create_task(clock.run())
    yield Parts(broker, hub, history, ConnectionLimiter(max_total=10, max_per_subject=2), clock)
    for task in (listener, ticking):
        task.cancel()
    await asyncio.gather(listener, ticking, return_exceptions=True)
    await broker.stop()


@contextlib.asynccontextmanager
async def subscribed(
    connection: SseConnection, *, resume_from: str | None
) -> AsyncIterator[Replay]:
    """How the SSE transport takes a connection's subscription
    (`service/transports/sse_stream.py:SseStream`): `open`, then `end` with the
    reason the queue or the exception gives."""
    replay = await connection.open(resume_from=resume_from)
    try:
        yield replay
    except BaseException as exc:
        await connection.end(reason=reason_for(exc, connection.queue))
        raise
    await connection.end(reason=reason_for(None, connection.queue))


def pairs(logs: Sequence[Mapping[str, object]]) -> list[tuple[object, object]]:
    return [
        (line["event"], line.get("close_reason"))
        for line in logs
        if line["event"] in ("stream_opened", "stream_closed")
    ]


async def test_the_subscription_is_released_on_exit_with_its_reason(parts: Parts) -> None:
    connection = parts.connection(queue_max=1)
    assert connection.admit() is None
    with capture_logs() as logs:
        async with subscribed(connection, resume_from=None) as replay:
            # A fresh stream resumes from the history head (empty here).
            assert (replay.fresh, replay.resume_point) == (True, EMPTY_HISTORY_ID)
            assert parts.hub.channel_names == ["u:patient:{pt_1}"]
            await parts.publish()
            await parts.publish()  # the queue holds one: too slow
            await asyncio.wait_for(connection.queue.wait(), WAIT_S)
            assert connection.queue.close_reason is CloseReason.TOO_SLOW
    assert parts.hub.channel_names == []
    assert parts.limiter.total == 0
    assert pairs(logs) == [("stream_opened", None), ("stream_closed", "too_slow")]


@pytest.mark.parametrize(
    ("raised", "reason"),
    [
        (BrokerUnavailableError(), "broker_unavailable"),
        (RuntimeError("bug"), "internal_error"),
        (asyncio.CancelledError(), "client_gone"),
    ],
)
async def test_an_exception_names_the_ending(
    parts: Parts, raised: BaseException, reason: str
) -> None:
    connection = parts.connection()
    assert connection.admit() is None
    with capture_logs() as logs, pytest.raises(type(raised)):
        async with subscribed(connection, resume_from=None):
            raise raised
    assert parts.hub.queues == frozenset()
    assert parts.limiter.total == 0
    assert pairs(logs) == [("stream_opened", None), ("stream_closed", reason)]


async def test_replay_then_live_without_duplicates(parts: Parts) -> None:
    first = await parts.publish()
    missed = [await parts.publish() for _ in range(3)]
    connection = parts.connection()
    assert connection.admit() is None
    async with subscribed(connection, resume_from=first) as replay:
        assert not replay.fresh
        assert not replay.start.gap
        # A live copy of the last replayed event arrives during the replay.
        parts.hub.on_message(
            KEYS.patient_channel("pt_1"),
            (await parts.history.read_all_after("pt_1", missed[1]))[0][0]
            .model_dump_json()
            .encode(),
        )
        replayed = [e.id async for page in connection.subscription.replayed(replay) for e in page]
        assert replayed == missed
        live = await parts.publish()
        await asyncio.wait_for(connection.queue.wait(), WAIT_S)
        assert [d.id for d in connection.queue.drain()] == [live]
        assert connection.queue.delivered == 4


async def test_admission_counts_per_subject(parts: Parts) -> None:
    connections = [parts.connection() for _ in range(3)]
    assert [s.admit() for s in connections] == [None, None, Limit.SUBJECT]
    for connection in connections[:2]:
        await connection.end(reason=CloseReason.CLIENT_GONE)
    assert parts.limiter.total == 0


async def test_expiry_warns_then_closes_the_stream(parts: Parts) -> None:
    """The clock warns the stream with `token_expiring`, then ends it."""
    expires_at = time.time() + 0.3
    connection = parts.connection(expires_at=expires_at)
    assert connection.admit() is None
    with capture_logs() as logs:
        async with subscribed(connection, resume_from=None):
            queue = connection.queue
            queued = []
            while queue.close_reason is None:
                await asyncio.wait_for(queue.wait(), WAIT_S)
                queued += queue.drain()
            queued += queue.drain()
            assert time.time() >= expires_at - 0.01
    assert [(d.kind, json.loads(d.payload)) for d in queued] == [
        ("token_expiring", {"expires_at": int(expires_at)})
    ]
    assert queue.close_reason is CloseReason.TOKEN_EXPIRED
    assert pairs(logs) == [("stream_opened", None), ("stream_closed", "token_expired")]


async def test_a_stream_ended_before_its_expiry_is_freed_at_once(parts: Parts) -> None:
    """Its expiry stays in the clock's heap until the token's time, emptied: the
    connection is freed by reference counting alone."""
    connection = parts.connection(expires_at=time.time() + 3600)
    assert connection.admit() is None
    gc.disable()
    try:
        async with subscribed(connection, resume_from=None):
            assert len(parts.clock) == 1
        ref = weakref.ref(connection)
        del connection
        assert ref() is None
    finally:
        gc.enable()


async def test_a_stream_without_expiry_gets_no_clock_entry(parts: Parts) -> None:
    connection = parts.connection(expires_at=0.0)
    assert connection.admit() is None
    async with subscribed(connection, resume_from=None):
        assert len(parts.clock) == 0


async def handed_over(
    parts: Parts, *, clock: Clock | None = None, queue_max: int = 10
) -> tuple[SseConnection, SseStream, RecordingTransport, list[str]]:
    """A stream past its opening, given a transport as `HandOver.take` would."""
    connection = parts.connection(queue_max=queue_max)
    assert connection.admit() is None
    stream = SseStream(
        connection=connection,
        clock=parts.clock if clock is None else clock,
        retry_ms=1000,
        resume_from=None,
    )
    opening = b"".join([chunk async for chunk in stream.opening()])
    assert opening.startswith(b"retry:")
    transport = RecordingTransport()
    taken = Taken(transport, chunked=True, write_paused=False, connections=set())
    stream.take(taken, request_id="rid")
    ended: list[str] = []
    stream.at_end(lambda: ended.append("access line"))
    return connection, stream, transport, ended


async def test_a_handed_over_stream_writes_chunks_and_holds_them_while_paused(
    parts: Parts,
) -> None:
    with capture_logs() as logs:
        connection, stream, transport, ended = await handed_over(parts)
        first = await parts.publish()
        await eventually(lambda: first.encode() in transport.written, what="first written")
        # One chunk: its length in hex, the SSE block, CRLF.
        size, _, rest = bytes(transport.written).partition(b"\r\n")
        assert int(size, 16) == len(rest) - 2
        assert rest.endswith(b"\n\n\r\n")
        # The transport's buffer is above its high-water mark: nothing is written.
        stream.pause_writing()
        before = len(transport.written)
        later = [await parts.publish() for _ in range(2)]
        await eventually(lambda: len(connection.queue) == 2, what="queued while paused")
        assert len(transport.written) == before
        stream.resume_writing()
        await eventually(lambda: later[1].encode() in transport.written, what="written on resume")
        tail = bytes(transport.written[before:])
        assert tail.index(later[0].encode()) < tail.index(later[1].encode())
        # The client leaves: the stream ends once, with its access line.
        stream.connection_lost(None)
        await eventually(lambda: bool(ended), what="stream ended")
    assert parts.hub.queues == frozenset()
    assert parts.limiter.total == 0
    assert ended == ["access line"]
    assert pairs(logs) == [("stream_opened", None), ("stream_closed", "client_gone")]
    assert transport.written.endswith(b"\r\n")  # no last chunk for a gone client


async def test_a_stream_paused_past_the_send_timeout_is_the_slow_consumer(
    parts: Parts,
) -> None:
    clock = Clock(heartbeat_s=15, send_timeout_s=0.05)
    slow_before = SSE_SLOW._value.get()
    with capture_logs() as logs:
        connection, stream, transport, ended = await handed_over(parts, clock=clock)
        stream.pause_writing()
        transport.buffered = 4096  # the peer takes nothing
        clock.tick(time.monotonic() + 1)  # past the send timeout
        await eventually(lambda: bool(ended), what="stream ended")
    assert connection.queue.close_reason is CloseReason.TOO_SLOW
    assert SSE_SLOW._value.get() == slow_before + 1
    # The reconnect hint, the last chunk, a close; cut off if the peer still
    # takes nothing within the send timeout.
    written = bytes(transport.written)
    assert b"event: reconnect" in written
    assert written.endswith(b"0\r\n\r\n")
    assert transport.closed
    await eventually(lambda: transport.aborted, what="aborted after the send timeout")
    assert pairs(logs) == [("stream_opened", None), ("stream_closed", "too_slow")]
    assert not clock.holds(stream)
    assert not clock.holds(connection)
