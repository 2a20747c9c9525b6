"""An SSE stream: its opening, written through the request's ASGI `send`, then its
live part, which owns its socket when the server can hand it over.

- `SseStream.opening`: the subscription (`SseConnection.open`: attached, `stream_opened`),
  `retry:`, the resume point, a `gap`, the replay. Always through ASGI: the
  headers before it went through the edge middleware (request id, CORS) like any
  response's.
- Live, under `notify serve` (`service/transports/http_protocol.py:HandOver`): the stream is
  the transport's protocol. No task, no ASGI `send`, no scope: the queue wakes it
  (`DeliveryQueue.hand_to`) and it writes what is queued at once, framed once per
  channel (`service/wire/sse.py`), in one chunk; heartbeats come from the process'
  clock the same way. "At once" is at the end of the loop iteration that woke it
  (`service/transports/writes.py`: one callback for every stream woken in it), so that a batch of
  messages from the listener is one write per stream, and a queue that the hub
  fills beyond its bound within one batch is too slow, as a writer task's was. Backpressure is the transport's: while its buffer is above
  the high-water mark (`pause_writing`) nothing is written and the queue fills; a
  full queue, or a buffer that stays above the mark past `NOTIFY_SEND_TIMEOUT_S`
  (the clock's stalled-send check, `abort`), is the slow consumer: closed with
  the reconnect hint. Its end (`_finish`) writes the closing frame and the last
  chunk, closes the socket, and runs the connection's end (detach, release,
  `stream_closed`) and the request's access line in one short task.
- Live, under any other server: `live_body`, one writer task over the queue
  (`service/transports/sse_response.py`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable
from typing import Final

import structlog

from service import metrics
from service.fanout.clock import Clock
from service.fanout.closing import ENDINGS, CloseReason
from service.fanout.connection import SseConnection, jittered_retry_ms
from service.fanout.queue import Delivery, DeliveryQueue
from service.fanout.subscription import reason_for
from service.services.errors import UnavailableError
from service.transports.http_protocol import Taken
from service.transports.writes import Writes
from service.wire.sse import (
    HEARTBEAT,
    HEARTBEAT_CHUNK,
    LAST_CHUNK,
    chunk,
    event_block,
    event_chunk,
    id_block,
    json_block,
    retry_block,
)

log = structlog.get_logger("service.stream")

SSE_DELIVERIES: Final = metrics.DELIVERIES.labels(transport="sse")
SSE_SLOW: Final = metrics.SLOW_CONSUMERS.labels(transport="sse")
# Ends of handed-over streams in progress (detach and log), referenced until done.
_ENDING: set[asyncio.Task[None]] = set()


def closing_frame(retry_ms: int, reason: CloseReason) -> bytes:
    """The last frame of a stream ended for `reason` (`service/fanout/closing.py`)."""
    ending = ENDINGS[reason]
    if ending.sse_event is None:
        return b""
    if ending.reconnect is not None:
        return json_block("reconnect", {"reason": ending.public}, jittered_retry_ms(retry_ms))
    # Expired, revoked or deleted credentials: reconnecting with them will fail.
    return json_block("closed", {"reason": ending.public})


# The SSE streams woken in this loop iteration, written at its end.
_WRITES: Final = Writes(SSE_DELIVERIES)


class _SharedBatch:
    """The chunk of the last several-delivery write. Under a broadcast every stream
    woken by one listener batch drains the same deliveries: they are joined and
    framed once, for all of them (the lists compare by identity, in C). Holds
    those deliveries until the next batch, nothing of a stream."""

    __slots__ = ("_chunk", "_items")

    def __init__(self) -> None:
        self._items: list[Delivery] = []
        self._chunk = b""

    def chunk_of(self, items: list[Delivery]) -> bytes:
        if items != self._items:
            self._items = items
            self._chunk = chunk(b"".join([event_block(item) for item in items]))
        return self._chunk


_BATCH: Final = _SharedBatch()


class SseStream:
    """One SSE stream, from its opening to its end; after a hand-over, the
    connection's protocol."""

    __slots__ = (
        "_at_end",
        "_chunked",
        "_clock",
        "_connection",
        "_connections",
        "_due",
        "_paused",
        "_request_id",
        "_resume_from",
        "_retry_ms",
        "_transport",
        "live",
        "send_started",
    )

    def __init__(
        self, *, connection: SseConnection, clock: Clock, retry_ms: int, resume_from: str | None
    ) -> None:
        self._connection = connection
        self._clock = clock
        self._retry_ms = retry_ms
        self._resume_from = resume_from
        # False once the opening ended the stream (Redis unreadable).
        self.live = True
        self._transport: asyncio.Transport | None = None
        self._chunked = True
        self._paused = False
        self._due = False
        self._connections: set[object] | None = None
        self._request_id: str | None = None
        self._at_end: Callable[[], None] | None = None
        # The clock's stalled-send check (`Watched`): since when the buffer is full.
        self.send_started = 0.0

    @property
    def queue(self) -> DeliveryQueue:
        return self._connection.queue

    # --- both paths -------------------------------------------------------------

    async def opening(self) -> AsyncGenerator[bytes]:
        """Subscribe, then the first bytes and the replay. Redis unreadable: the
        stream ends with the reconnect hint (`live` False)."""
        connection = self._connection
        try:
            replay = await connection.open(resume_from=self._resume_from)
            # First bytes only once the channel is subscribed: a client that has seen
            # `retry:` knows every event published from now on reaches it.
            retry = retry_block(jittered_retry_ms(self._retry_ms))
            if replay.fresh:
                # An id-only block: sets the EventSource's last event id without
                # dispatching an event, so its next reconnect resumes from here. Then
                # `resume_point` with the same id, for page code: it cannot read an
                # EventSource's last event id until an event is dispatched, and needs
                # it to resume after the browser gave up (a block without `id:` keeps
                # the id just set).
                head = replay.resume_point
                yield retry + id_block(head) + json_block("resume_point", {"id": head})
            else:
                yield retry
            if replay.start.gap:
                yield json_block("gap", {"oldest_id": replay.start.oldest_id})
            async for page in connection.subscription.replayed(replay):
                yield b"".join([event_block(Delivery.from_event(event)) for event in page])
        except UnavailableError:
            # History or the channel could not be read: the client retries from its
            # last id.
            self.live = False
            await self.end(CloseReason.BROKER_UNAVAILABLE)
            yield closing_frame(self._retry_ms, CloseReason.BROKER_UNAVAILABLE)
        except BaseException as exc:
            self.live = False
            await self.end(reason_for(exc, connection.queue))
            raise

    async def end(self, reason: CloseReason) -> None:
        """The connection's end: detach, release, `stream_closed` (once)."""
        await self._connection.end(reason=reason)

    async def live_body(self) -> AsyncGenerator[bytes]:
        """The live part through ASGI, for servers without a hand-over: one writer
        drains the queue per wake-up."""
        queue = self._connection.queue
        failed: BaseException | None = None
        try:
            while True:
                await queue.wait()
                items = queue.drain()
                if items:
                    yield b"".join([event_block(item) for item in items])
                    SSE_DELIVERIES.inc(len(items))
                    queue.heartbeat_due = False
                elif queue.heartbeat_due:
                    queue.heartbeat_due = False
                    yield HEARTBEAT
                reason = queue.close_reason
                if reason is not None:
                    if reason is not CloseReason.CLIENT_GONE:
                        yield closing_frame(self._retry_ms, reason)
                    return
        except BaseException as exc:
            failed = exc
            raise
        finally:
            # Whatever ended it: an exception names it (`internal_error`), else
            # the queue's reason (closing the body, a cancellation: `client_gone`).
            await self.end(reason_for(failed, queue))

    # --- after the hand-over: the connection's protocol ---------------------------

    def take(self, taken: Taken, *, request_id: str | None) -> None:
        """The socket is this stream's from now on (`HandOver.take` gave it)."""
        self._transport = taken.transport
        self._chunked = taken.chunked
        self._connections = taken.connections
        self._paused = taken.write_paused
        if self._paused:
            self.send_started = time.monotonic()
        self._request_id = request_id
        queue = self._connection.queue
        self._clock.add(self, heartbeats=queue)
        # Everything queued during the opening is written now, then each delivery
        # as the hub offers it.
        queue.hand_to(self)

    def at_end(self, done: Callable[[], None]) -> None:
        """Run `done` (the edge middleware's access line) once the stream ended."""
        self._at_end = done

    def set(self) -> None:
        """The queue's wake-up: something queued, a heartbeat due, or closed. The
        write follows at the end of this loop iteration."""
        if self._transport is None or self._due:
            return
        self._due = True
        _WRITES.add(self)

    def write_due(self, now: float) -> int:
        """Write what is queued (or a heartbeat) in one write, then end the stream
        if its queue is closed; the number of deliveries written (`Writes` counts
        them once per flush). One method, no call per layer: a broadcast runs it
        once per stream."""
        self._due = False
        transport = self._transport
        if transport is None:
            return 0
        queue = self._connection.queue
        reason = queue.close_reason
        written = 0
        try:
            if self._paused:
                if reason is None:
                    # Written on `resume_writing`; the queue's bound decides who is
                    # too slow.
                    return 0
            else:
                items = queue.drain()
                if items:
                    written = len(items)
                    queue.heartbeat_due = False
                    if not self._chunked:
                        transport.write(b"".join([event_block(item) for item in items]))
                    elif written == 1:
                        # A broadcast: every stream writes the delivery's one chunk.
                        transport.write(event_chunk(items[0]))
                    else:
                        transport.write(_BATCH.chunk_of(items))
                    queue.next_heartbeat = now + self._clock.heartbeat_s
                elif queue.heartbeat_due and reason is None:
                    queue.heartbeat_due = False
                    transport.write(HEARTBEAT_CHUNK if self._chunked else HEARTBEAT)
                    queue.next_heartbeat = now + self._clock.heartbeat_s
            if reason is not None:
                self._finish(reason)
        except Exception:
            log.exception("stream_write_failed")
            queue.close(CloseReason.INTERNAL_ERROR)
            if self._transport is not None:
                self._finish(CloseReason.INTERNAL_ERROR)
        return written

    def clear(self) -> None:
        pass

    def _write(self, transport: asyncio.Transport, body: bytes) -> None:
        transport.write(chunk(body) if self._chunked else body)

    def _finish(self, reason: CloseReason) -> None:
        """The last frame, the last chunk, the socket closed; then the connection's end."""
        transport, self._transport = self._transport, None
        assert transport is not None
        self._clock.discard(self)
        if self._connections is not None:
            self._connections.discard(self)
        if not transport.is_closing():
            if reason is not CloseReason.CLIENT_GONE:
                frame = closing_frame(self._retry_ms, reason)
                if frame:
                    self._write(transport, frame)
                if self._chunked:
                    transport.write(LAST_CHUNK)
            transport.close()
            if transport.get_write_buffer_size():
                # A peer that does not read would hold the socket and its buffer:
                # it gets the send timeout to take the last bytes, then is cut off.
                asyncio.get_running_loop().call_later(self._clock.send_timeout_s, transport.abort)
        task = asyncio.get_running_loop().create_task(self._ended(reason))
        _ENDING.add(task)
        task.add_done_callback(_ENDING.discard)

    async def _ended(self, reason: CloseReason) -> None:
        structlog.contextvars.clear_contextvars()
        if self._request_id is not None:
            structlog.contextvars.bind_contextvars(request_id=self._request_id)
        try:
            await self.end(reason)
        except Exception:
            # No request cycle is left to log it: the end's own line.
            log.exception("stream_end_failed", transport="sse", reason=reason.value)
        finally:
            # The queue's wake-up is this stream: that reference goes with the
            # connection (no cycle left for the collector).
            self._connection.queue.hand_to(None)
            at_end, self._at_end = self._at_end, None
            if at_end is not None:
                at_end()

    # asyncio's protocol callbacks (`service/transports/hand_over.py:SocketOwner`).

    def connection_lost(self, exc: Exception | None) -> None:
        self._connection.queue.close(CloseReason.CLIENT_GONE)
        if self._transport is not None:
            # The queue was closed already and its wake-up did not end the stream.
            self._finish(self._connection.queue.close_reason or CloseReason.CLIENT_GONE)

    def data_received(self, data: bytes) -> None:
        """An EventSource sends nothing more; whatever comes is dropped."""

    def eof_received(self) -> bool | None:
        # The client closed its side: the transport closes, `connection_lost` follows.
        return None

    def pause_writing(self) -> None:
        self._paused = True
        self.send_started = time.monotonic()

    def resume_writing(self) -> None:
        self._paused = False
        self.send_started = 0.0
        self.set()

    def abort(self) -> None:
        """The clock: the buffer stayed full past the send timeout. The slow consumer."""
        queue = self._connection.queue
        if queue.close_reason is None:
            SSE_SLOW.inc()
        queue.close(CloseReason.TOO_SLOW)

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown (the drain has normally ended it already)."""
        self._connection.queue.close(CloseReason.SHUTDOWN)
