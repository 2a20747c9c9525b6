"""uvicorn's httptools protocol, without its reference cycle per WebSocket.

uvicorn's `HttpToolsProtocol` owns an `HttpRequestParser` that holds the
protocol's bound callbacks, and drops it in `connection_lost`. After a WebSocket
upgrade the transport belongs to the WebSocket protocol, so that
`connection_lost` never runs: every WebSocket left the HTTP protocol, its parser,
scope and headers behind as a cycle that only a full collection frees (rare with
`NOTIFY_GC_TUNING`). Checked on uvicorn 0.55.
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class HttpProtocol(HttpToolsProtocol):
    def handle_websocket_upgrade(self) -> None:
        super().handle_websocket_upgrade()
        # This protocol is done: the transport now calls the WebSocket protocol.
        self.parser = None  # type: ignore[assignment]
