"""uvicorn's httptools protocol, without its reference cycle per WebSocket, with a
lighter wake-up signal per connection, a header deadline, and the SSE hand-over.

uvicorn's `HttpToolsProtocol` owns an `HttpRequestParser` that holds the
protocol's bound callbacks, and drops it in `connection_lost`. After a WebSocket
upgrade the transport belongs to the WebSocket protocol, so that
`connection_lost` never runs: every WebSocket left the HTTP protocol, its parser,
scope and headers behind as a cycle that only a full collection frees (rare with
`NOTIFY_GC_TUNING`). Checked on uvicorn 0.55.

A request must finish its headers within `header_timeout_s` (`NOTIFY_HEADER_TIMEOUT_S`)
of the connection opening or of its first byte after a keep-alive pause: uvicorn
arms no timer before a first request nor while headers trickle in, so a client
sending one header line every few seconds held its connection (and ~3 KB) for good
(issue 23: 4,000 such connections held past 100 s). A partial request is answered
`408` with `Connection: close` (RFC 9110 15.5.9: a slow but honest client, or curl,
learns why); a connection that sent nothing is closed silently, like an idle
keep-alive connection (browsers open speculative connections they may never use,
and retry a closed idle one). Both count in `notify_header_timeouts_total`.

An admitted SSE stream whose headers are out takes the connection over
(`HandOver`, the scope's `notify.hand_over` extension; `HttpProtocol.hand_over`):
the transport's protocol becomes the stream, which gets `connection_lost`,
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
with address look-ups of its own) is pinned by `tests/unit/test_http_protocol.py`:
an upgrade that changes it fails there. With `service/transports/ws_protocol.py`,
the only code that touches uvicorn's private parts.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final, cast

from uvicorn.logging import TRACE_LOG_LEVEL
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.utils import is_ssl

from service import metrics
from service.transports.hand_over import (
    DISCONNECT_EXTENSION,
    DisconnectHook,
    LightEvent,
    OneHandOver,
    SocketOwner,
    address,
)

DEFAULT_HEADER_TIMEOUT_S: Final = 10.0
REQUEST_TIMEOUT_RESPONSE: Final = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
)


HAND_OVER_EXTENSION: Final = "notify.hand_over"


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


class HandOver(OneHandOver[Taken]):
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


def _nothing() -> None:
    pass
