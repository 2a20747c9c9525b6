"""uvicorn's httptools protocol, without its reference cycle per WebSocket and
with a lighter wake-up signal per connection.

uvicorn's `HttpToolsProtocol` owns an `HttpRequestParser` that holds the
protocol's bound callbacks, and drops it in `connection_lost`. After a WebSocket
upgrade the transport belongs to the WebSocket protocol, so that
`connection_lost` never runs: every WebSocket left the HTTP protocol, its parser,
scope and headers behind as a cycle that only a full collection frees (rare with
`NOTIFY_GC_TUNING`). Checked on uvicorn 0.55.

Each connection also gets two `asyncio.Event`s (the request cycle's "message
arrived" and flow control's "writable"); each holds a `collections.deque` of
waiters from birth, 760 bytes of a stream's idle memory in tracemalloc
(bench/results/NOTES.md, issue 15). `LightEvent` allocates its waiter list only
while someone waits.

An endless response learns that its client left from `connection_lost` through
`DisconnectHook` (the scope's `notify.disconnect` extension), instead of a task
per stream blocked in `receive()`: one task per SSE stream, not two. The hook holds
no reference back to the protocol (the scope outlives nothing, no cycle).

A request must finish its headers within `header_timeout_s` (`NOTIFY_HEADER_TIMEOUT_S`)
of the connection opening or of its first byte after a keep-alive pause: uvicorn
arms no timer before a first request nor while headers trickle in, so a client
sending one header line every few seconds held its connection (and ~3 KB) for good
(issue 23: 4,000 such connections held past 100 s). A partial request is answered
`408` with `Connection: close` (RFC 9110 15.5.9: a slow but honest client, or curl,
learns why); a connection that sent nothing is closed silently, like an idle
keep-alive connection (browsers open speculative connections they may never use,
and retry a closed idle one). Both count in `notify_header_timeouts_total`.

The same hook's `abort` resets a connection whose send the clock aborted (a peer
that stopped reading): uvicorn would otherwise close it gracefully, waiting to flush
its buffers to a peer that never reads. `WsProtocol` gives a WebSocket session the
same hook (uvicorn's sans-I/O WebSocket protocol, `notify serve`'s `ws`), and a
hand-over of its own (`WsHandOver`, the scope's `notify.ws_hand_over`): an
admitted WebSocket's stream takes the transport and the open `websockets`
`ServerProtocol` (`WsProtocol.hand_over`).

An admitted SSE stream whose headers are out takes the connection over
(`HandOver`, the scope's `notify.hand_over` extension; `HttpProtocol.hand_over`):
the transport's protocol becomes the stream (`transport.set_protocol`, as uvicorn
itself does for a WebSocket upgrade), which gets `connection_lost`,
`pause_writing`/`resume_writing` and `data_received` from then on. uvicorn's
request cycle is marked complete without a byte more (its task returns, nothing is
closed) and the connection serves no other request: its keep-alive ends, and a
pipelined request is dropped. The stream takes this protocol's place in the
server's connection set, so that a graceful shutdown calls its `shutdown()` and
waits for it like for any connection. This protocol, its parser, the cycle and
the scope are freed once the request's task returns.

What this module takes from uvicorn's private `HttpToolsProtocol` (its callback
names, `cycle` and its `response_started`/`response_complete`/`keep_alive`/
`chunked_encoding`/`disconnected`, `parser`, `pipeline`, `connections`,
`transport`, `flow`, and the body of `connection_made`, which `HttpProtocol` copies
with address look-ups of its own), and from its `WebSocketsSansIOProtocol` (`conn`,
`queue`, `frames`, `request`, the keepalive timers and the connection state:
`WsProtocol`), is pinned by `tests/unit/test_http_protocol.py`: an upgrade that
changes it fails there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Final, Generic, Literal, Protocol, TypeVar, cast

from uvicorn.logging import TRACE_LOG_LEVEL
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.utils import is_ssl
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from service import metrics

DEFAULT_HEADER_TIMEOUT_S: Final = 10.0
REQUEST_TIMEOUT_RESPONSE: Final = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
)


class LightEvent:
    """`asyncio.Event`'s interface (`is_set`, `set`, `clear`, `wait`) and semantics,
    without a deque per instance."""

    __slots__ = ("_value", "_waiters")

    def __init__(self, *, value: bool = False) -> None:
        self._value = value
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._value

    def set(self) -> None:
        if self._value:
            return
        self._value = True
        for future in self._waiters or ():
            if not future.done():
                future.set_result(None)

    def clear(self) -> None:
        self._value = False

    async def wait(self) -> Literal[True]:
        if self._value:
            return True
        future = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(future)
        try:
            await future
            return True
        finally:
            self._waiters.remove(future)
            if not self._waiters:
                self._waiters = None


DISCONNECT_EXTENSION: Final = "notify.disconnect"


class DisconnectHook:
    """Set `callback` to be called once when the connection is lost (at once if
    it is lost already); set it back to None to stop listening. `abort` resets
    the connection (a send that stalled for good: nothing more can reach the peer).

    It holds the connection's transport until the connection is lost (or upgraded to
    a WebSocket), so the transport → protocol → hook → transport cycle never
    outlives the connection."""

    __slots__ = ("_callback", "_lost_waiter", "_transport", "lost")

    def __init__(self, transport: asyncio.Transport | None = None) -> None:
        self._callback: Callable[[], None] | None = None
        self._transport = transport
        self._lost_waiter: asyncio.Future[None] | None = None
        self.lost = False

    @property
    def callback(self) -> Callable[[], None] | None:
        return self._callback

    @callback.setter
    def callback(self, callback: Callable[[], None] | None) -> None:
        self._callback = callback
        if callback is not None and self.lost:
            self._fire()

    def connection_lost(self) -> None:
        self.lost = True
        self._transport = None
        waiter, self._lost_waiter = self._lost_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self._fire()

    def forget_transport(self) -> None:
        """The connection is no longer this protocol's (a WebSocket upgrade)."""
        self._transport = None

    async def abort(self) -> None:
        """Reset the connection, dropping what is still buffered for the peer, and
        return once it is lost: uvicorn then counts the response's end as the
        client's departure, not as an app that returned without finishing it
        (which it logs as an error and answers with a graceful close, one that
        waits for a peer that does not read to take the buffered bytes, forever)."""
        transport = self._transport
        if transport is None or self.lost:
            return
        self._lost_waiter = waiter = asyncio.get_running_loop().create_future()
        # `connection_lost` follows in the next loop iteration, always.
        transport.abort()
        await waiter

    def _fire(self) -> None:
        callback, self._callback = self._callback, None
        if callback is not None:
            callback()


HAND_OVER_EXTENSION: Final = "notify.hand_over"


_T = TypeVar("_T")
_T_co = TypeVar("_T_co", covariant=True)


class SocketOwner(Protocol):
    """What takes a connection over (`service/transports/sse_stream.py:SseStream`):
    an asyncio protocol from then on, and a connection uvicorn's shutdown asks to end."""

    def connection_lost(self, exc: Exception | None) -> None: ...

    def data_received(self, data: bytes) -> None: ...

    def eof_received(self) -> bool | None: ...

    def pause_writing(self) -> None: ...

    def resume_writing(self) -> None: ...

    def shutdown(self) -> None: ...


class Taken:
    """What a new owner gets: the transport, whether the response's body is chunked
    (`Transfer-Encoding: chunked`, HTTP/1.1), whether writes are paused right now,
    and the server's connection set (the owner leaves it when it ends)."""

    __slots__ = ("chunked", "connections", "transport", "write_paused")

    def __init__(
        self,
        transport: asyncio.Transport,
        *,
        chunked: bool,
        write_paused: bool,
        connections: set[Any],
    ) -> None:
        self.transport = transport
        self.chunked = chunked
        self.write_paused = write_paused
        self.connections = connections


class _HandsOver(Protocol[_T_co]):
    def hand_over(self, owner: SocketOwner) -> _T_co | None: ...


class _OneHandOver(Generic[_T]):
    """A connection's hand-over, taken at most once: holds the protocol until the
    connection is lost or handed over (a cycle broken by the protocol, never left
    to the collector)."""

    __slots__ = ("_protocol",)

    def __init__(self, protocol: _HandsOver[_T]) -> None:
        self._protocol: _HandsOver[_T] | None = protocol

    def take(self, owner: SocketOwner) -> _T | None:
        """Give `owner` the connection; None when it cannot be had (see the
        protocol's `hand_over`), and the caller goes on through ASGI."""
        protocol, self._protocol = self._protocol, None
        if protocol is None:
            return None
        return protocol.hand_over(owner)

    def forget(self) -> None:
        self._protocol = None


class HandOver(_OneHandOver[Taken]):
    """An HTTP connection's hand-over, offered to the request being answered: the
    owner gets it once the response's headers (and any body so far) are written;
    not when lost, closing, or the response not started (`HttpProtocol.hand_over`)."""

    __slots__ = ()


class HttpProtocol(HttpToolsProtocol):
    """uvicorn builds one per connection; `notify serve` passes `header_timeout_s`
    through `functools.partial` (picklable, so it reaches every worker)."""

    _disconnect_hook: DisconnectHook | None = None
    _hand_over: HandOver | None = None
    _header_timer: asyncio.TimerHandle | None = None
    # A request's first byte arrived and its headers are not complete yet.
    _in_headers = False

    def __init__(
        self, *args: Any, header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout_s = header_timeout_s

    def connection_made(self, transport: Any) -> None:
        # uvicorn's `connection_made`, except where the addresses come from: it asks
        # the transport for its `socket`, and uvloop then keeps that pseudo-socket
        # and the two address tuples it returned in the transport for the
        # connection's whole life (0.36 KiB of every idle stream, bench/results/
        # NOTES.md "Issue 23: the SSE stream's last bytes"). The `peername` and
        # `sockname` extra infos give the same addresses and keep nothing; the
        # scope's `client` and `server` hold the only copies, gone with the request.
        self.connections.add(self)
        self.transport = transport
        self.flow = FlowControl(transport)
        self.server = address(transport.get_extra_info("sockname"), local=True)
        self.client = cast(tuple[str, int] | None, address(transport.get_extra_info("peername")))
        self.scheme = "https" if is_ssl(transport) else "http"
        if self.logger.level <= TRACE_LOG_LEVEL:
            prefix = "%s:%d - " % self.client if self.client else ""  # noqa: UP031 (uvicorn's)
            self.logger.log(TRACE_LOG_LEVEL, "%sHTTP connection made", prefix)
        self._arm_header_timer()
        # One per connection, not per request: HTTP/1.1 answers in order, so only
        # the request being answered can hold the callback (a pipelined one waits
        # in uvicorn's queue until the stream before it has ended).
        self._disconnect_hook = DisconnectHook(transport)
        self._hand_over = HandOver(self)
        flow = getattr(self, "flow", None)
        if flow is not None:
            flow._is_writable_event = LightEvent(value=flow._is_writable_event.is_set())

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_late)

    def _cancel_header_timer(self) -> None:
        timer, self._header_timer = self._header_timer, None
        if timer is not None:
            timer.cancel()

    def _headers_too_late(self) -> None:
        self._header_timer = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        stage = "in_headers" if self._in_headers else "before_request"
        metrics.HEADER_TIMEOUTS.labels(stage=stage).inc()
        if self._in_headers:
            transport.write(REQUEST_TIMEOUT_RESPONSE)
        transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        # The first byte of a request (also the next one on a keep-alive connection).
        self._in_headers = True
        self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._cancel_header_timer()
        super().on_headers_complete()
        cycle = self.cycle
        # Just created (its task has not run yet; the body callbacks follow this one).
        if cycle is not None and isinstance(cycle.message_event, asyncio.Event):
            cycle.message_event = LightEvent(value=cycle.message_event.is_set())  # type: ignore[assignment]
            hook = self._disconnect_hook
            scope = cast(dict[str, Any], cycle.scope)
            extensions = scope.setdefault("extensions", {})
            if hook is not None:
                extensions[DISCONNECT_EXTENSION] = hook
            if self._hand_over is not None:
                extensions[HAND_OVER_EXTENSION] = self._hand_over

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)
        self._forget_hand_over()
        hook, self._disconnect_hook = self._disconnect_hook, None
        if hook is not None:
            hook.connection_lost()

    def _forget_hand_over(self) -> None:
        hand_over, self._hand_over = self._hand_over, None
        if hand_over is not None:
            hand_over.forget()

    def hand_over(self, owner: SocketOwner) -> Taken | None:
        """`HandOver.take`: the transport becomes `owner`'s, uvicorn's cycle ends
        without writing or closing anything, and this protocol lets go of it."""
        cycle, transport = self.cycle, self.transport
        if (
            cycle is None
            or transport is None
            or transport.is_closing()
            or cycle.disconnected
            or not cycle.response_started
            or cycle.response_complete
        ):
            return None
        # `run_asgi` then sees a complete response: no "returned without completing"
        # close, no 500; `on_response` is not called, so no keep-alive timer and no
        # pipelined request starts. The connection never serves another request.
        cycle.response_complete = True
        cycle.keep_alive = False
        cycle.on_response = _nothing
        self.pipeline.clear()
        self._unset_keepalive_if_required()
        self._cancel_header_timer()
        taken = Taken(
            transport,
            chunked=bool(cycle.chunked_encoding),
            write_paused=self.flow.write_paused,
            connections=self.connections,
        )
        if self.flow.read_paused:
            # The owner reads (and drops) whatever comes, so that a close is noticed.
            self.flow.resume_reading()
        self.connections.discard(self)
        cast(set[Any], self.connections).add(owner)
        self.parser = None  # type: ignore[assignment]
        self.cycle = None  # type: ignore[assignment]
        hook, self._disconnect_hook = self._disconnect_hook, None
        if hook is not None:
            hook.forget_transport()
        self._forget_hand_over()
        transport.set_protocol(owner)  # type: ignore[arg-type]
        return taken

    def handle_websocket_upgrade(self) -> None:
        super().handle_websocket_upgrade()
        # This protocol is done: the transport now calls the WebSocket protocol.
        self.parser = None  # type: ignore[assignment]
        hook, self._disconnect_hook = self._disconnect_hook, None
        if hook is not None:
            hook.forget_transport()
        self._forget_hand_over()


WS_HAND_OVER_EXTENSION: Final = "notify.ws_hand_over"


class WsTaken:
    """What a WebSocket's new owner gets: the transport, the `websockets`
    `ServerProtocol` uvicorn negotiated (OPEN, with its extensions), the messages
    that arrived before the hand-over and the app had not read (text, or None for
    a binary one), whether writes are paused, and the server's connection set."""

    __slots__ = ("connections", "pending", "protocol", "transport", "write_paused")

    def __init__(
        self,
        transport: asyncio.Transport,
        protocol: ServerProtocol,
        *,
        pending: list[str | None],
        write_paused: bool,
        connections: set[Any],
    ) -> None:
        self.transport = transport
        self.protocol = protocol
        self.pending = pending
        self.write_paused = write_paused
        self.connections = connections


class WsHandOver(_OneHandOver[WsTaken]):
    """A WebSocket's hand-over, offered to its session (`notify.ws_hand_over`): the
    owner gets the open WebSocket; not when lost, closing, or a fragmented message
    half read (`WsProtocol.hand_over`)."""

    __slots__ = ()


class _Detached:
    """The transport of a WebSocket protocol whose connection was handed over:
    uvicorn's task closes "its" transport when the app returns; nothing happens."""

    __slots__ = ()

    def close(self) -> None:
        pass

    def is_closing(self) -> bool:
        return True

    def write(self, data: bytes) -> None:
        pass


_DETACHED: Final = _Detached()


class WsProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol, with two extensions in the scope.

    `notify.disconnect` (`DisconnectHook`), for its `abort`: a session whose send
    the clock aborted (a peer that stopped reading) resets the connection. uvicorn's
    own close after the session is graceful: it waits to flush what is buffered,
    so a peer that stays connected without reading kept the socket (and its
    buffers) for good, and held the server's shutdown until its graceful timeout.

    `notify.ws_hand_over` (`WsHandOver`): an accepted, authenticated and admitted
    WebSocket takes the connection over (`service/transports/ws_stream.py:WsStream`),
    as an SSE stream does (`HttpProtocol.hand_over`): the transport's protocol
    becomes the stream, with the `websockets` `ServerProtocol` uvicorn negotiated
    (its state OPEN, its extensions, e.g. permessage-deflate). uvicorn's keepalive
    timers are cancelled (the stream pings from the process' clock), this protocol
    leaves the server's connection set for the stream, and the session's task
    returns: the protocol, its queue, scope and events are freed with it.

    What this takes from uvicorn's private `WebSocketsSansIOProtocol` (`conn`,
    `transport`, `connections`, `queue`, `frames`, `read_paused`, `writable`,
    `close_sent`, `disconnected`, `handshake_complete`, `initial_response`,
    `response`, `scope`, `stop_keepalive`) is pinned by
    `tests/unit/test_http_protocol.py`."""

    _disconnect_hook: DisconnectHook | None = None
    _ws_hand_over: WsHandOver | None = None

    def connection_made(self, transport: Any) -> None:
        # uvicorn's, with the addresses from `peername`/`sockname` as in
        # `HttpProtocol.connection_made`: asking for the transport's `socket` makes
        # uvloop keep a pseudo-socket and both address tuples for the connection's
        # whole life, which after the hand-over is the WebSocket stream's.
        self.connections.add(self)
        self.transport = transport
        self.server = address(transport.get_extra_info("sockname"), local=True)
        self.client = cast(tuple[str, int] | None, address(transport.get_extra_info("peername")))
        self.scheme = "wss" if is_ssl(transport) else "ws"
        if self.logger.level <= TRACE_LOG_LEVEL:
            prefix = "%s:%d - " % self.client if self.client else ""  # noqa: UP031 (uvicorn's)
            self.logger.log(TRACE_LOG_LEVEL, "%sWebSocket connection made", prefix)

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        # The session's task is created but has not run yet.
        scope = cast(dict[str, Any], getattr(self, "scope", None))
        if scope is not None and self.response.status_code == 101:
            self._disconnect_hook = hook = DisconnectHook(self.transport)
            extensions = scope.setdefault("extensions", {})
            extensions[DISCONNECT_EXTENSION] = hook
            self._ws_hand_over = hand_over = WsHandOver(self)
            extensions[WS_HAND_OVER_EXTENSION] = hand_over

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._forget_ws_hand_over()
        hook, self._disconnect_hook = self._disconnect_hook, None
        if hook is not None:
            hook.connection_lost()

    def _forget_ws_hand_over(self) -> None:
        hand_over, self._ws_hand_over = self._ws_hand_over, None
        if hand_over is not None:
            hand_over.forget()

    def hand_over(self, owner: SocketOwner) -> WsTaken | None:
        """`WsHandOver.take`: the transport and the open `ServerProtocol` become
        `owner`'s; this protocol stops its keepalive and lets go of both."""
        transport = self.transport
        if (
            transport is None
            or isinstance(transport, _Detached)
            or transport.is_closing()
            or self.disconnected
            or self.close_sent
            or not self.handshake_complete
            or self.initial_response is not None
            or self.conn.state is not State.OPEN
            or self.frames
        ):
            return None
        # Messages the app has not read yet (the connection is open, so they can
        # only be messages, not a disconnect).
        pending: list[str | None] = []
        while not self.queue.empty():
            message = self.queue.get_nowait()
            if message["type"] == "websocket.receive":
                pending.append(cast(dict[str, Any], message).get("text"))
        self.stop_keepalive()
        if self.read_paused:
            self.read_paused = False
            transport.resume_reading()
        # The handshake's request stays referenced for the connection's life by
        # `websockets`' parser (a local of its suspended generator): its headers
        # (~3 KB) are not needed past the handshake.
        request = getattr(self, "request", None)
        if isinstance(request, Request):
            request.headers.clear()
        taken = WsTaken(
            transport,
            self.conn,
            pending=pending,
            write_paused=not self.writable.is_set(),
            connections=self.connections,
        )
        self.connections.discard(self)
        cast(set[Any], self.connections).add(owner)
        # `run_asgi` closes the protocol's transport once the app returns.
        self.transport = cast(asyncio.Transport, _DETACHED)
        hook, self._disconnect_hook = self._disconnect_hook, None
        if hook is not None:
            hook.forget_transport()
        self._forget_ws_hand_over()
        transport.set_protocol(owner)  # type: ignore[arg-type]
        return taken


def address(info: Any, *, local: bool = False) -> tuple[str, int | None] | None:
    """A transport's `sockname` (`local`) or `peername` as uvicorn's scope holds it
    (`uvicorn/protocols/utils.py:get_local_addr`, `get_remote_addr` on a socket):
    host and port of an IP address (an IPv6 one has two more fields), the path of
    a Unix socket for the server (port None), else None."""
    if isinstance(info, list | tuple) and len(info) >= 2:
        return (str(info[0]), int(info[1]))
    if local and isinstance(info, str):
        return (info, None)
    return None


def _nothing() -> None:
    pass
