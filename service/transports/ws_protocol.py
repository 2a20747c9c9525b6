"""uvicorn's sans-I/O WebSocket protocol (`notify serve`'s `ws`), with the
disconnect hook and the WebSocket hand-over in the scope (`WsProtocol`).

What this module takes from uvicorn's private `WebSocketsSansIOProtocol` (`conn`,
`queue`, `frames`, `request`, the keepalive timers and the connection state) is
pinned by `tests/unit/test_http_protocol.py`: an upgrade that changes it fails
there. With `service/transports/http_protocol.py`, the only code that touches
uvicorn's private parts.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final, cast

from uvicorn.logging import TRACE_LOG_LEVEL
from uvicorn.protocols.utils import is_ssl
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from service.transports.hand_over import (
    DISCONNECT_EXTENSION,
    DisconnectHook,
    OneHandOver,
    SocketOwner,
    address,
)

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


class WsHandOver(OneHandOver[WsTaken]):
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
