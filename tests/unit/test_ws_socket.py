"""`WsSocket`: the session's view of an accepted WebSocket keeps Starlette's
`WebSocket` state rules that the loop's error handling relies on
(`service/transports/ws.py:close_with` and `_run.send` catch exactly these)."""

from __future__ import annotations

from collections import deque

import pytest
from starlette.types import Message
from starlette.websockets import WebSocketDisconnect, WebSocketDisconnected

from service.transports.ws import WsSocket


class FakeServer:
    """The server's ASGI `receive`/`send`: queued messages in, sent messages kept;
    `broken` makes `send` fail as uvicorn's does once the transport is gone."""

    def __init__(self, *incoming: Message) -> None:
        self.incoming = deque(incoming)
        self.sent: list[Message] = []
        self.broken = False

    async def receive(self) -> Message:
        return self.incoming.popleft()

    async def send(self, message: Message) -> None:
        if self.broken:
            raise ConnectionResetError("client gone")  # uvicorn: ClientDisconnected(OSError)
        self.sent.append(message)


async def test_sends_text_then_close_and_nothing_after() -> None:
    server = FakeServer()
    socket = WsSocket(server.receive, server.send)
    await socket.send_text("hi")
    await socket.close(4003, "revoked")
    assert server.sent == [
        {"type": "websocket.send", "text": "hi"},
        {"type": "websocket.close", "code": 4003, "reason": "revoked"},
    ]
    with pytest.raises(WebSocketDisconnected):
        await socket.send_text("late")
    with pytest.raises(WebSocketDisconnected):
        await socket.close()
    assert len(server.sent) == 2


async def test_a_send_on_a_gone_transport_is_a_disconnect() -> None:
    server = FakeServer()
    socket = WsSocket(server.receive, server.send)
    server.broken = True
    with pytest.raises(WebSocketDisconnect) as raised:
        await socket.send_text("hi")
    assert raised.value.code == 1006
    # Nothing more is tried on it.
    server.broken = False
    with pytest.raises(WebSocketDisconnected):
        await socket.close()
    assert server.sent == []


async def test_a_close_on_a_gone_transport_is_a_disconnect() -> None:
    server = FakeServer()
    socket = WsSocket(server.receive, server.send)
    server.broken = True
    with pytest.raises(WebSocketDisconnect):
        await socket.close(1001)


async def test_nothing_is_received_after_the_disconnect() -> None:
    text: Message = {"type": "websocket.receive", "text": "{}"}
    gone: Message = {"type": "websocket.disconnect", "code": 1000}
    server = FakeServer(text, gone, text)
    socket = WsSocket(server.receive, server.send)
    assert await socket.receive() == text
    assert await socket.receive() == gone
    with pytest.raises(WebSocketDisconnected):
        await socket.receive()
    assert list(server.incoming) == [text]
