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
same hook (uvicorn's sans-I/O WebSocket protocol, `notify serve`'s `ws`).

What this module takes from uvicorn's private `HttpToolsProtocol` (its callback
names, `cycle`, `parser`, `transport`, `flow._is_writable_event`) is pinned by
`tests/unit/test_http_protocol.py`: an upgrade that changes it fails there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Final, Literal, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request

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


class HttpProtocol(HttpToolsProtocol):
    """uvicorn builds one per connection; `notify serve` passes `header_timeout_s`
    through `functools.partial` (picklable, so it reaches every worker)."""

    _disconnect_hook: DisconnectHook | None = None
    _header_timer: asyncio.TimerHandle | None = None
    # A request's first byte arrived and its headers are not complete yet.
    _in_headers = False

    def __init__(
        self, *args: Any, header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout_s = header_timeout_s

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._arm_header_timer()
        # One per connection, not per request: HTTP/1.1 answers in order, so only
        # the request being answered can hold the callback (a pipelined one waits
        # in uvicorn's queue until the stream before it has ended).
        self._disconnect_hook = DisconnectHook(transport)
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
            if hook is not None:
                scope = cast(dict[str, Any], cycle.scope)
                scope.setdefault("extensions", {})[DISCONNECT_EXTENSION] = hook

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)
        hook, self._disconnect_hook = self._disconnect_hook, None
        if hook is not None:
            hook.connection_lost()

    def handle_websocket_upgrade(self) -> None:
        super().handle_websocket_upgrade()
        # This protocol is done: the transport now calls the WebSocket protocol.
        self.parser = None  # type: ignore[assignment]
        hook, self._disconnect_hook = self._disconnect_hook, None
        if hook is not None:
            hook.forget_transport()


class WsProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol, with the connection's `DisconnectHook`
    in the scope (`notify.disconnect`), for its `abort`: a session whose send the
    clock aborted (a peer that stopped reading) resets the connection. uvicorn's
    own close after the session is graceful: it waits to flush what is buffered,
    so a peer that stays connected without reading kept the socket (and its
    buffers) for good, and held the server's shutdown until its graceful timeout."""

    _disconnect_hook: DisconnectHook | None = None

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        # The session's task is created but has not run yet.
        scope = cast(dict[str, Any], getattr(self, "scope", None))
        if scope is not None and self.response.status_code == 101:
            self._disconnect_hook = hook = DisconnectHook(self.transport)
            scope.setdefault("extensions", {})[DISCONNECT_EXTENSION] = hook

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        hook, self._disconnect_hook = self._disconnect_hook, None
        if hook is not None:
            hook.connection_lost()
