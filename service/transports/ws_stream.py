"""A WebSocket that owns its socket: once accepted, authenticated and admitted
under `notify serve` (`service/transports/ws_protocol.py:WsHandOver`), the connection is
this small object, the transport's protocol. No reader or writer task, no ASGI
`send`/`receive`, no scope, no uvicorn protocol.

- Frames are parsed and built by the `websockets` `ServerProtocol` uvicorn
  negotiated (OPEN, with its extensions, e.g. permessage-deflate).
- Client frames go to the same handlers as on the ASGI path
  (`service/transports/ws_handlers.py:handle`), in order. Handlers await (subscribe,
  commands, a fresh `auth`): a frame batch runs in one short task, which ends when
  the batch is handled; frames arriving meanwhile join it (reading pauses while
  `INBOX_MAX` wait). An idle socket has no task.
- Writes: the connection's queues wake the stream (`WsConnection.hand_to`), which
  writes what is ready at the end of the loop iteration
  (`service/transports/writes.py`), replies and live events alike, in order. A new
  subscription's `subscribed` and replay read history: one short task, and what
  comes after it waits for it.
- Backpressure is the transport's: while its buffer is above the high-water mark
  (`pause_writing`) nothing is written, and closes wait too (as a writer blocked in
  a send did); the queues fill, and a full one closes as too slow, sent once the
  peer reads again. Paused past `NOTIFY_SEND_TIMEOUT_S` (the clock's stalled-send
  check, `abort`; or the drain's end, `Clock.abort_sends`), the connection is reset
  and ends as `client_gone`: no close frame could pass.
- Keepalive: protocol pings every `NOTIFY_WS_PING_INTERVAL_S`, a missing pong after
  `NOTIFY_WS_PING_TIMEOUT_S` closes with 1011 "keepalive ping timeout" (what
  uvicorn did), from the process' clock (`heartbeat`), no timer per socket.
- Its end: the reconnect hint and the close frame (`service/fanout/closing.py`), the
  connection's end (every subscription ended, the limit released, `ws_closed`)
  and the request's access line in one short task; the socket closes once the
  peer answers the close, or after `CLOSE_HANDSHAKE_TIMEOUT_S` (uvicorn's).
"""

from __future__ import annotations

import asyncio
import random
import struct
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, Final

import structlog
from websockets.frames import Frame, Opcode
from websockets.server import ServerProtocol

from service.fanout.closing import CloseReason, Ending
from service.fanout.subscription import Subscription
from service.fanout.ws_connection import INTERNAL, UNAVAILABLE, WS_DELIVERIES, WsConnection
from service.services.errors import UnavailableError
from service.state import AppState
from service.transports.writes import Writes
from service.transports.ws_handlers import handle, reconnect_text
from service.transports.ws_protocol import WsTaken

log = structlog.get_logger("service.ws")

# uvicorn's `close_timeout`: how long the peer has to answer our close frame.
CLOSE_HANDSHAKE_TIMEOUT_S: Final = 10.0
# Frames read ahead while a handler awaits; reading pauses beyond this.
INBOX_MAX: Final = 32
# The WebSocket streams woken in this loop iteration, written at its end.
_WRITES: Final = Writes(WS_DELIVERIES)
# Short tasks of streams (a frame batch, a subscription's start, an end),
# referenced until done.
_TASKS: set[asyncio.Task[None]] = set()


def _spawn(coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    task = asyncio.get_running_loop().create_task(coroutine)
    _TASKS.add(task)
    task.add_done_callback(_TASKS.discard)
    return task


class WsStream:
    """One WebSocket after its hand-over: the connection's protocol."""

    __slots__ = (
        "_at_end",
        "_close_timer",
        "_connection",
        "_connections",
        "_due",
        "_ending",
        "_fragments",
        "_inbox",
        "_paused",
        "_ping",
        "_ping_sent",
        "_protocol",
        "_read_paused",
        "_reading",
        "_request_id",
        "_resumed",
        "_starting",
        "_state",
        "_transport",
        "next_heartbeat",
        "send_started",
    )

    def __init__(self, *, connection: WsConnection, state: AppState) -> None:
        self._connection = connection
        self._state = state
        self._transport: asyncio.Transport | None = None
        self._protocol: ServerProtocol | None = None
        self._connections: set[object] | None = None
        self._request_id: str | None = None
        self._at_end: Callable[[], None] | None = None
        self._paused = False
        self._read_paused = False
        self._due = False
        # Set once the stream ends (its reason); the socket may still await the
        # peer's answer to our close frame.
        self._ending: CloseReason | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        # Client messages waiting for the handler task; a fragmented one so far.
        self._inbox: deque[str | None] | None = None
        self._fragments: list[bytes] | None = None
        self._reading: asyncio.Task[None] | None = None
        self._starting: asyncio.Task[None] | None = None
        self._resumed: asyncio.Future[None] | None = None
        # The ping in flight (its payload) and when the last one was sent.
        self._ping: bytes | None = None
        self._ping_sent = 0.0
        # The clock: since when the buffer is full (`Watched`), and when the next
        # ping (or the check for its pong) is due (`Heartbeats`).
        self.send_started = 0.0
        self.next_heartbeat = 0.0

    def take(self, taken: WsTaken, *, request_id: str | None) -> None:
        """The socket is this stream's from now on (`WsHandOver.take` gave it)."""
        self._transport = taken.transport
        self._protocol = taken.protocol
        self._connections = taken.connections
        self._paused = taken.write_paused
        if self._paused:
            self.send_started = time.monotonic()
        self._request_id = request_id
        # uvicorn's keepalive was stopped: the first ping one interval from now,
        # every later one at the interval `heartbeat` sets.
        self._state.clock.add(
            self, heartbeats=self, first_heartbeat_s=self._state.settings.ws_ping_interval_s
        )
        # What is queued already (`authenticated`, at least) is written now.
        self._connection.hand_to(self)
        for text in taken.pending:
            self._received(text)

    def at_end(self, done: Callable[[], None]) -> None:
        """Run `done` (the edge middleware's access line) once the stream ended."""
        self._at_end = done

    # --- writing -------------------------------------------------------------------

    def set(self) -> None:
        """The queues' wake-up: the write follows at the end of this loop iteration."""
        if self._transport is None or self._due or self._ending is not None:
            return
        self._due = True
        _WRITES.add(self)

    def clear(self) -> None:
        pass

    def write_due(self, now: float) -> int:
        """Write what is ready; the number of events written (`Writes` counts
        them once per flush)."""
        self._due = False
        if self._transport is None or self._ending is not None:
            return 0
        connection = self._connection
        before = connection.delivered
        try:
            self._flush()
        except Exception:
            log.exception("ws_failed")
            self._close(INTERNAL)
        return connection.delivered - before

    def _flush(self) -> None:
        if self._paused or self._starting is not None:
            # Written on `resume_writing`, or once the subscription has started.
            return
        connection = self._connection
        closing = connection.closing()
        if closing is not None:
            if closing.reason is CloseReason.SHUTDOWN:
                # What is already here is legitimate: send it (a subscription not
                # started yet is not).
                frames, _ = connection.ready()
            elif closing is connection.requested:
                frames = connection.ready_replies()
            else:
                frames = []
            self._send(frames)
            self._close(closing)
            return
        frames, starting = connection.ready()
        self._send(frames)
        if starting is not None:
            self._starting = _spawn(self._start(starting))

    def _send(self, frames: list[str]) -> None:
        if not frames:
            return
        protocol, transport = self._protocol, self._transport
        assert protocol is not None
        assert transport is not None
        for frame in frames:
            protocol.send_text(frame.encode())
        transport.write(b"".join(protocol.data_to_send()))

    async def _send_waiting(self, frame: str) -> None:
        """One frame of a replay: waits while the transport's buffer is full."""
        while self._paused:
            self._resumed = asyncio.get_running_loop().create_future()
            try:
                await self._resumed
            finally:
                self._resumed = None
        self._send([frame])

    async def _start(self, subscription: Subscription) -> None:
        try:
            await self._connection.start_subscription(subscription, self._send_waiting)
        except UnavailableError:
            # History could not be read during a replay: retry from `since` later.
            self._starting = None
            self._close(UNAVAILABLE)
            return
        except Exception:
            log.exception("ws_failed")
            self._starting = None
            self._close(INTERNAL)
            return
        self._starting = None
        self.set()

    # --- reading -------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        transport, protocol = self._transport, self._protocol
        if transport is None or protocol is None or transport.is_closing():
            return
        protocol.receive_data(data)
        if protocol.parser_exc is not None:
            # A protocol error or a message above the size limit: `websockets`
            # queued the close frame; the client is gone once the socket closes.
            self._write_pending()
            transport.close()
            return
        for event in protocol.events_received():
            if isinstance(event, Frame) and self._frame(event):
                return

    def _frame(self, frame: Frame) -> bool:
        """One frame; True once the socket is closing."""
        opcode = frame.opcode
        if opcode is Opcode.CLOSE:
            transport = self._transport
            assert transport is not None
            # Our close answered, or the peer's close echoed by `websockets`.
            self._write_pending()
            transport.close()
            return True
        if opcode is Opcode.PING:
            self._write_pending()  # the pong `websockets` queued
        elif opcode is Opcode.PONG:
            if self._ping is not None and bytes(frame.data) == self._ping:
                self._ping = None
        elif self._ending is None:
            if opcode is Opcode.CONT:
                if self._fragments is None:
                    return False
                self._fragments.append(bytes(frame.data))
            elif frame.fin:
                return self._message(opcode is Opcode.TEXT, bytes(frame.data))
            else:
                self._fragments = [b"t" if opcode is Opcode.TEXT else b"b", bytes(frame.data)]
            if frame.fin:
                kind, *parts = self._fragments
                self._fragments = None
                return self._message(kind == b"t", b"".join(parts))
        return False

    def _message(self, is_text: bool, data: bytes) -> bool:
        text: str | None = None
        if is_text:
            try:
                text = data.decode()
            except UnicodeDecodeError:
                protocol, transport = self._protocol, self._transport
                assert protocol is not None
                assert transport is not None
                protocol.fail(1007, "invalid UTF-8")
                self._write_pending()
                transport.close()
                return True
        self._received(text)
        return False

    def _received(self, text: str | None) -> None:
        """A client message (None: binary), handled after those before it."""
        if self._ending is not None or self._connection.requested is not None:
            return  # a close is decided: the rest is not read
        if self._inbox is None:
            self._inbox = deque()
        self._inbox.append(text)
        if self._reading is None:
            self._reading = _spawn(self._read())
        elif len(self._inbox) >= INBOX_MAX and not self._read_paused:
            transport = self._transport
            if transport is not None:
                self._read_paused = True
                transport.pause_reading()

    async def _read(self) -> None:
        connection, state = self._connection, self._state
        try:
            while self._inbox:
                text = self._inbox.popleft()
                if self._read_paused and len(self._inbox) < INBOX_MAX // 2:
                    self._resume_reading()
                closing = await handle(text, state, connection)
                if closing is not None:
                    connection.request_close(closing)
                    break
        except Exception:
            log.exception("ws_failed")
            self._reading = self._inbox = None
            self._close(INTERNAL)
            return
        self._reading = self._inbox = None
        self._resume_reading()

    def _resume_reading(self) -> None:
        if self._read_paused:
            self._read_paused = False
            if self._transport is not None:
                self._transport.resume_reading()

    def _write_pending(self) -> None:
        protocol, transport = self._protocol, self._transport
        assert protocol is not None
        assert transport is not None
        data = b"".join(protocol.data_to_send())
        if data:
            transport.write(data)

    # --- the clock (`service/fanout/clock.py`: `Watched`, `Heartbeats`) --------------

    def heartbeat(self) -> None:
        """Ping, or check the pong of the ping in flight."""
        protocol, transport = self._protocol, self._transport
        if protocol is None or transport is None or self._ending is not None:
            return
        settings = self._state.settings
        interval, timeout = settings.ws_ping_interval_s, settings.ws_ping_timeout_s
        now = time.monotonic()
        if self._ping is not None:
            if now - self._ping_sent >= timeout:
                protocol.fail(1011, "keepalive ping timeout")
                self._write_pending()
                transport.close()
                return
            self.next_heartbeat = min(self._ping_sent + timeout, now + interval)
            return
        if now < self._ping_sent + interval:
            self.next_heartbeat = self._ping_sent + interval
            return
        # A random payload names this ping: stale or unsolicited pongs are ignored.
        self._ping = struct.pack("!I", random.getrandbits(32))
        self._ping_sent = now
        protocol.send_ping(self._ping)
        self._write_pending()
        self.next_heartbeat = now + min(interval, timeout)

    def abort(self) -> None:
        """The buffer stayed full past the send timeout (or the drain ended): reset
        the connection; nothing more can reach the peer."""
        if self._transport is not None:
            self._transport.abort()

    # --- the end -------------------------------------------------------------------

    def _close(self, ending: Ending) -> None:
        """The reconnect hint (when retrying can succeed) and the close frame; the
        connection's end."""
        if self._ending is not None:
            return
        protocol, transport = self._protocol, self._transport
        if transport is not None and protocol is not None and not transport.is_closing():
            if ending.ws_code is None:
                transport.close()
            else:
                hint = reconnect_text(ending, self._state.settings.sse_retry_ms)
                if hint is not None:
                    protocol.send_text(hint.encode())
                protocol.send_close(int(ending.ws_code), ending.ws_reason or "")
                self._write_pending()
                self._close_timer = asyncio.get_running_loop().call_later(
                    CLOSE_HANDSHAKE_TIMEOUT_S, self._close_unanswered
                )
        self._end(ending.reason)

    def _close_unanswered(self) -> None:
        self._close_timer = None
        transport = self._transport
        if transport is None:
            return
        if transport.get_write_buffer_size():
            transport.abort()
        else:
            transport.close()

    def _end(self, reason: CloseReason, *, finish_reading: bool = False) -> None:
        """End the connection once its tasks are done: cancelled, except the frames
        read before the client left, which are handled first (`finish_reading`: a
        `subscribe` sent just before the close opens and ends its subscription)."""
        self._ending = reason
        self._state.clock.discard(self)
        current = asyncio.current_task()
        tasks = [t for t in (self._reading, self._starting) if t is not None and t is not current]
        for task in tasks:
            if not (finish_reading and task is self._reading):
                task.cancel()
        _spawn(self._ended(reason, tasks))

    async def _ended(self, reason: CloseReason, tasks: list[asyncio.Task[None]]) -> None:
        structlog.contextvars.clear_contextvars()
        if self._request_id is not None:
            structlog.contextvars.bind_contextvars(request_id=self._request_id)
        try:
            if tasks:
                await asyncio.wait(tasks)
            await self._connection.end(reason=reason)
        except Exception:
            # No session task is left to log it: the end's own line.
            log.exception("stream_end_failed", transport="ws", reason=reason.value)
        finally:
            # The queues' wake-up is this stream: that reference goes with the
            # connection (no cycle left for the collector).
            self._connection.hand_to(None)
            self._reading = self._starting = None
            self._inbox = None
            at_end, self._at_end = self._at_end, None
            if at_end is not None:
                at_end()

    # --- asyncio's protocol callbacks (`service/transports/hand_over.py:SocketOwner`) --------

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        timer, self._close_timer = self._close_timer, None
        if timer is not None:
            timer.cancel()
        connections, self._connections = self._connections, None
        if connections is not None:
            connections.discard(self)
        resumed = self._resumed
        if resumed is not None and not resumed.done():
            resumed.cancel()
        if self._ending is None:
            self._connection.queue.close(CloseReason.CLIENT_GONE)
            self._end(CloseReason.CLIENT_GONE, finish_reading=True)

    def eof_received(self) -> bool | None:
        # The client closed its side: the transport closes, `connection_lost` follows.
        return None

    def pause_writing(self) -> None:
        self._paused = True
        self.send_started = time.monotonic()

    def resume_writing(self) -> None:
        self._paused = False
        self.send_started = 0.0
        resumed = self._resumed
        if resumed is not None and not resumed.done():
            resumed.set_result(None)
        self.set()

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown (the drain has normally ended it already)."""
        if self._ending is not None:
            if self._transport is not None:
                self._transport.close()
            return
        self._connection.queue.close(CloseReason.SHUTDOWN)
