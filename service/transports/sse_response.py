"""sse-starlette's response, streamed without its four tasks per connection.

`EventSourceResponse` runs a task group per connection (writer, ping, shutdown
watcher, disconnect listener). At ten thousand idle streams that machinery is most
of a stream's memory, and every event pays its cancel-scope bookkeeping. Here the
process' clock does the heartbeats, the service's drain replaces the shutdown
watcher, and the protocol's `connection_lost` the disconnect listener. The stream
runs from the edge middleware once routing has returned, so the framework's
per-request frames and exit stacks are not kept alive for hours: the headers and
the stream's opening go through ASGI `send` (the middleware's request id and CORS
headers on them), then, under `notify serve`, the stream takes its socket over
(`service/transports/http_protocol.py:HandOver`, `service/transports/sse_stream.py:SseStream`)
and this response returns; under any other server it writes the live part itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any, Final

from sse_starlette import EventSourceResponse
from starlette.types import Receive, Scope, Send

from service.fanout.clock import Clock, SendWatch
from service.fanout.closing import CloseReason
from service.middleware import defer_stream, handed_over
from service.transports.hand_over import DISCONNECT_EXTENSION, DisconnectHook
from service.transports.http_protocol import HAND_OVER_EXTENSION, HandOver
from service.transports.sse_stream import SseStream


class SseStreamResponse(EventSourceResponse, SendWatch):
    """Headers, HEAD handling and framing from sse-starlette; the stream is
    `stream`'s. The clock watches this response's sends for stalls and wakes the
    stream's queue for keep-alives while it writes through ASGI; every write
    pushes the next keep-alive back."""

    def __init__(self, stream: SseStream, *, headers: dict[str, str], clock: Clock) -> None:
        # What sse-starlette's `__init__` sets, taken from one response built by
        # it per distinct `headers` (issue 23: building and encoding the same
        # headers, and an `anyio.Lock`, cost every connect ~3 % of its CPU).
        # `tests/unit/test_sse_response.py` holds the two equal.
        self.__dict__.update(_library_attributes(headers))
        self.raw_headers = list(self.raw_headers)  # each response its own list
        self.body_iterator = _nothing()
        self._sse = stream
        self._clock = clock
        SendWatch.__init__(self)

    # --- ASGI -----------------------------------------------------------------------

    def _on_disconnect(self) -> None:
        self._sse.queue.close(CloseReason.CLIENT_GONE)

    async def _watch_disconnect(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self._on_disconnect()
                return

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"].upper() == "HEAD":
            await super().__call__(scope, receive, send)
            return
        if defer_stream(scope, self._stream):
            # The edge middleware runs the stream after routing has unwound.
            return
        await self._stream(scope, receive, send)

    async def _send(self, send: Send, chunk: bytes) -> None:
        self.send_started = now = time.monotonic()
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
        self.send_started = 0.0
        self._sse.queue.next_heartbeat = now + self._clock.heartbeat_s

    async def _stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.task = asyncio.current_task()
        stream = self._sse
        extensions = scope.get("extensions") or {}
        hook = extensions.get(DISCONNECT_EXTENSION)
        hand_over = extensions.get(HAND_OVER_EXTENSION)
        watcher: asyncio.Task[None] | None = None
        if isinstance(hook, DisconnectHook):
            # Our uvicorn protocol tells us when the client leaves: no task for it.
            hook.callback = self._on_disconnect
        else:
            # Any other server: a listener task, owned by this response (cancelled
            # in `finally`, never outlives it).
            watcher = asyncio.create_task(self._watch_disconnect(receive))
        self._clock.add(self, heartbeats=stream.queue)
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            async with contextlib.aclosing(stream.opening()) as opening:
                async for chunk in opening:
                    await self._send(send, chunk)
            if stream.live and isinstance(hand_over, HandOver):
                self._clock.discard(self)
                taken = hand_over.take(stream)
                if taken is not None:
                    stream.take(taken, request_id=scope.get("state", {}).get("request_id"))
                    # The edge middleware's access line waits for the stream's end.
                    handed_over(scope, stream)
                    return
                self._clock.add(self, heartbeats=stream.queue)
            if stream.live:
                async with contextlib.aclosing(stream.live_body()) as live:
                    async for chunk in live:
                        await self._send(send, chunk)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not self.aborted:
                raise
            # Our own abort of a stalled writer: end quietly. Under our protocol the
            # connection is reset, so uvicorn sees the client gone (not a response
            # left unfinished, an error) and keeps no socket for a peer that does
            # not read; under other servers the server closes it.
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            self._on_disconnect()
            if isinstance(hook, DisconnectHook):
                await hook.abort()
        finally:
            self._clock.discard(self)
            self.release()
            if isinstance(hook, DisconnectHook):
                hook.callback = None
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher


# sse-starlette's attributes per distinct header set (the routes' constant ones;
# past this many, a header set is built each time rather than remembered).
_LIBRARY_ATTRIBUTES: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
_LIBRARY_ATTRIBUTES_MAX: Final = 16


def _library_attributes(headers: dict[str, str]) -> dict[str, Any]:
    """The attributes `EventSourceResponse(…, headers=headers, ping=0, sep="\\n")`
    sets, but its `_send_lock` (it serialises the library's ping task with its
    writer; neither runs here, HEAD is answered without them, and the lock costs
    ~0.8 KiB a stream) and its `body_iterator`."""
    key = tuple(headers.items())
    found = _LIBRARY_ATTRIBUTES.get(key)
    if found is None:
        built = EventSourceResponse(_nothing(), headers=headers, ping=0, sep="\n")
        found = {
            name: value
            for name, value in vars(built).items()
            if name not in ("_send_lock", "body_iterator")
        }
        if len(_LIBRARY_ATTRIBUTES) < _LIBRARY_ATTRIBUTES_MAX:
            _LIBRARY_ATTRIBUTES[key] = found
    return found


async def _nothing() -> AsyncIterator[bytes]:
    """sse-starlette's content, never iterated (HEAD ends before it)."""
    return
    yield b""
