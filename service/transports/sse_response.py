"""sse-starlette's response, streamed by one task instead of four.

`EventSourceResponse` runs a task group per connection (writer, ping, shutdown
watcher, disconnect listener). At ten thousand idle streams that machinery is most
of a stream's memory, and every event pays its cancel-scope bookkeeping. Here the
body iterator writes its own heartbeats, the service's drain replaces the
shutdown watcher, and one small task listens for the client's disconnect. The
stream itself runs from the edge middleware once routing has returned, so the
framework's per-request frames and exit stacks are not kept alive for hours.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

from sse_starlette import EventSourceResponse
from starlette.types import Receive, Scope, Send

from service.fanout.clock import Clock, Heartbeats, SendWatch
from service.http_protocol import DISCONNECT_EXTENSION, DisconnectHook
from service.middleware import defer_stream


class SseStreamResponse(EventSourceResponse, SendWatch):
    """Headers, HEAD handling and framing from sse-starlette; a lighter stream loop.

    `content` must yield ready-made `bytes`. `on_disconnect` is called once when the
    client goes away (or stops reading) and must make the iterator finish;
    `heartbeats` (the stream's queue) is handed to `clock` (one task for
    all streams: `service/fanout/clock.py`), which wakes it for a keep-alive
    when this response wrote nothing for a while; every write pushes that back."""

    def __init__(
        self,
        content: AsyncIterator[bytes],
        *,
        headers: dict[str, str],
        clock: Clock,
        on_disconnect: Callable[[], None],
        heartbeats: Heartbeats,
    ) -> None:
        super().__init__(content, headers=headers, ping=0, sep="\n")
        # Serialises the library's ping task with its writer; neither runs here
        # (HEAD is answered without them), and the lock costs ~0.8 KiB a stream.
        del self._send_lock
        self._content = content
        self._clock = clock
        self._on_disconnect = on_disconnect
        self._heartbeats = heartbeats
        SendWatch.__init__(self)

    # --- ASGI -----------------------------------------------------------------------

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

    async def _stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.task = asyncio.current_task()
        hook = scope.get("extensions", {}).get(DISCONNECT_EXTENSION)
        watcher: asyncio.Task[None] | None = None
        if isinstance(hook, DisconnectHook):
            # Our uvicorn protocol tells us when the client leaves: no task for it.
            hook.callback = self._on_disconnect
        else:
            # Any other server: a listener task, owned by this response (cancelled
            # in `finally`, never outlives it).
            watcher = asyncio.create_task(self._watch_disconnect(receive))
        self._clock.add(self, heartbeats=self._heartbeats)
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            async for chunk in self._content:
                self.send_started = now = time.monotonic()
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                self.send_started = 0.0
                self._heartbeats.next_heartbeat = now + self._clock.heartbeat_s
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
            aclose = getattr(self._content, "aclose", None)
            if aclose is not None:
                await aclose()
