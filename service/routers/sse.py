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
from collections.abc import AsyncIterator, Callable

from sse_starlette import EventSourceResponse
from starlette.types import Receive, Scope, Send

from service.middleware import DEFERRED_STREAM

HEARTBEAT = b": keep-alive\n\n"


class LeanEventSourceResponse(EventSourceResponse):
    """Headers, HEAD handling and framing from sse-starlette; a lighter stream loop.

    `content` must yield ready-made `bytes`. `on_disconnect` is called once when
    the client goes away, and must make the iterator finish."""

    def __init__(
        self,
        content: AsyncIterator[bytes],
        *,
        headers: dict[str, str],
        send_timeout_s: float,
        on_disconnect: Callable[[], None],
    ) -> None:
        super().__init__(content, headers=headers, ping=0, sep="\n", send_timeout=send_timeout_s)
        self._content = content
        self._on_disconnect = on_disconnect

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
        deferred = scope.get(DEFERRED_STREAM)
        if deferred is not None and not deferred:
            # The edge middleware runs the stream after routing has unwound.
            deferred.append(self._stream)
            return
        await self._stream(scope, receive, send)

    async def _stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Owned by this response: cancelled in `finally`, never outlives it.
        watcher = asyncio.create_task(self._watch_disconnect(receive))
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            async for chunk in self._content:
                # A peer that stopped reading (half-open TCP) is found here.
                async with asyncio.timeout(self.send_timeout):
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except TimeoutError:
            # Stalled writer: give up on this client; uvicorn closes the socket.
            self._on_disconnect()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            aclose = getattr(self._content, "aclose", None)
            if aclose is not None:
                await aclose()
