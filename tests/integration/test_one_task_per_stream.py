"""Under `notify serve`'s uvicorn protocol a live SSE stream is no task at all: once
its opening is written it owns its socket (`service/transports/http_protocol.py:HandOver`,
`service/transports/sse_stream.py:SseStream`), so no request task, no ASGI
request cycle, no response object and no uvicorn protocol stays alive for it, and
the client's departure still ends it (`connection_lost`, now the stream's own).
During its opening the departure reaches it through the protocol's
`connection_lost` (`DisconnectHook`), not a task blocked in `receive()`.

A WebSocket likewise, once admitted (`service/transports/ws_protocol.py:WsHandOver`,
`service/transports/ws_stream.py:WsStream`): no session task, no reader or writer,
no uvicorn WebSocket protocol."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
from collections import Counter

import httpx
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from service.config import Settings
from service.transports.hand_over import DisconnectHook
from service.transports.sse_response import SseStreamResponse
from service.transports.sse_stream import SseStream
from service.transports.ws_stream import WsStream
from tests.conftest import Tokens, bearer
from tests.support.app_server import run_app
from tests.support.publishing import publish_one
from tests.support.raw_clients import open_ws_subscribed
from tests.support.sse import open_sse, opened
from tests.support.waiting import eventually

ME = "/v1/patients/me/events"
STREAMS = 30


def watcher_tasks() -> int:
    names = [str(getattr(t.get_coro(), "__qualname__", "")) for t in asyncio.all_tasks()]
    return len([name for name in names if name.endswith("_watch_disconnect")])


def request_tasks() -> int:
    """uvicorn's task per request (`RequestResponseCycle.run_asgi`)."""
    names = [str(getattr(t.get_coro(), "__qualname__", "")) for t in asyncio.all_tasks()]
    return len([name for name in names if name.endswith("run_asgi")])


def per_request_objects() -> Counter[str]:
    """The request machinery a stream used to keep, and the streams themselves."""
    kinds = (
        RequestResponseCycle,
        HttpToolsProtocol,
        SseStreamResponse,
        SseStream,
        WebSocketsSansIOProtocol,
        WsStream,
    )
    alive: Counter[str] = Counter()
    for obj in gc.get_objects():
        # By type: `isinstance` on a dead weak proxy raises `ReferenceError`.
        if issubclass(type(obj), kinds):
            alive[type(obj).__name__] += 1
    return alive


async def test_streams_hold_no_disconnect_task_and_still_end_when_clients_leave(
    settings: Settings, tokens: Tokens
) -> None:
    async with (
        run_app(settings) as app,
        httpx.AsyncClient(base_url=app.base_url, timeout=10) as http,
        contextlib.AsyncExitStack() as stack,
    ):
        streams = [
            await stack.enter_async_context(
                open_sse(http, ME, headers=bearer(tokens.patient(f"pt_{i}")))
            )
            for i in range(STREAMS)
        ]
        for stream in streams:
            await opened(stream)
        assert len(app.state.hub.queues) == STREAMS
        assert watcher_tasks() == 0
        # The request tasks returned once their streams took the sockets over.
        await eventually(lambda: request_tasks() == 0, what="request tasks returned")
        alive = per_request_objects()
        assert alive["SseStream"] == STREAMS
        assert alive["RequestResponseCycle"] == 0
        assert alive["HttpProtocol"] == 0
        assert alive["SseStreamResponse"] == 0
        # Delivery reaches them without a task.
        sent = await publish_one(app, "pt_0")
        (frame,) = await streams[0].wait_events(1)
        assert frame.id == sent
        await stack.aclose()  # every client leaves
        await eventually(lambda: not app.state.hub.queues, what="streams ended")
        assert app.state.hub.channel_names == []


def ws_tasks() -> int:
    """The ASGI path's reader and writer tasks of a WebSocket."""
    names = [t.get_name() for t in asyncio.all_tasks()]
    return len([name for name in names if name in ("ws-read", "ws-write")])


async def test_websockets_hold_no_task_and_still_end_when_clients_leave(
    settings: Settings, tokens: Tokens
) -> None:
    async with run_app(settings) as app:
        sockets = [await open_ws_subscribed(app, tokens.patient(f"pt_{i}")) for i in range(STREAMS)]
        try:
            assert len(app.state.hub.queues) == 2 * STREAMS  # own queue + subscription
            await eventually(lambda: request_tasks() == 0, what="session tasks returned")
            assert ws_tasks() == 0
            alive = per_request_objects()
            assert alive["WsStream"] == STREAMS
            assert alive["WebSocketsSansIOProtocol"] == 0
            # Delivery reaches them without a task.
            sent = await publish_one(app, "pt_0")
            async with asyncio.timeout(10):
                while True:
                    message = json.loads(await sockets[0].recv())
                    if message["type"] == "event":
                        break
            assert message["event"]["id"] == sent
        finally:
            for socket in sockets:
                await socket.close()
        await eventually(lambda: not app.state.hub.queues, what="sockets ended")
        assert app.state.hub.channel_names == []


def test_a_hook_set_after_the_loss_fires_at_once_and_only_once() -> None:
    hook = DisconnectHook()
    calls: list[str] = []
    hook.connection_lost()
    hook.callback = lambda: calls.append("late")
    hook.connection_lost()
    assert calls == ["late"]


def test_a_cleared_hook_is_not_called() -> None:
    hook = DisconnectHook()
    calls: list[str] = []
    hook.callback = lambda: calls.append("x")
    hook.callback = None
    hook.connection_lost()
    assert calls == []


async def test_a_stream_after_another_request_on_the_same_connection_still_ends(
    settings: Settings, tokens: Tokens
) -> None:
    # The hook is the connection's: a keep-alive request before the stream must
    # not leave the stream deaf to the client's departure.
    async with run_app(settings) as app:
        port = int(app.base_url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        token = tokens.patient("pt_keepalive")
        writer.write(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
        await reader.readexactly(length)
        writer.write(
            f"GET {ME} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
        )
        await writer.drain()
        await asyncio.wait_for(reader.readuntil(b"retry:"), 10)
        await eventually(lambda: len(app.state.hub.queues) == 1, what="stream attached")
        writer.close()
        await eventually(lambda: not app.state.hub.queues, what="stream ended")


async def test_an_http_1_0_stream_keeps_the_framing_its_headers_announced(
    settings: Settings, tokens: Tokens
) -> None:
    # uvicorn announces `Transfer-Encoding: chunked` and `Connection: close` to an
    # HTTP/1.0 client too: the handed-over stream frames its writes as the headers
    # said (`Taken.chunked`), ends with the last chunk, and closes the connection.
    async with run_app(settings) as app:
        port = int(app.base_url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        token = tokens.patient("pt_http10")
        writer.write(f"GET {ME} HTTP/1.0\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
        await writer.drain()
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).lower()
        assert b"transfer-encoding: chunked" in head
        assert b"connection: close" in head
        await asyncio.wait_for(reader.readuntil(b"retry:"), 10)
        await eventually(lambda: request_tasks() == 0, what="request task returned")
        sent = await publish_one(app, "pt_http10")
        await asyncio.wait_for(reader.readuntil(f"id: {sent}\n".encode()), 10)
        # The server ends it (drain): the reconnect hint, the last chunk, the close.
        app.state.begin_drain()
        rest = await asyncio.wait_for(reader.read(), 10)
        assert b"event: reconnect" in rest
        assert rest.endswith(b"\r\n0\r\n\r\n")
        writer.close()
        await eventually(lambda: not app.state.hub.queues, what="stream ended")
