"""Under `notify serve`'s uvicorn protocol an SSE stream is one task: the client's
departure reaches it through the protocol's `connection_lost` (`DisconnectHook`),
not through a second task blocked in `receive()`, and it still ends the stream."""

from __future__ import annotations

import asyncio
import contextlib

import httpx

from service.config import Settings
from service.http_protocol import DisconnectHook
from tests.conftest import Tokens, bearer
from tests.support.app_server import run_app
from tests.support.sse import open_sse, opened
from tests.support.waiting import eventually

ME = "/v1/patients/me/events"
STREAMS = 30


def watcher_tasks() -> int:
    names = [str(getattr(t.get_coro(), "__qualname__", "")) for t in asyncio.all_tasks()]
    return len([name for name in names if name.endswith("_watch_disconnect")])


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
        await stack.aclose()  # every client leaves
        await eventually(lambda: not app.state.hub.queues, what="streams ended")
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
