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
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


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


class HttpProtocol(HttpToolsProtocol):
    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        flow = getattr(self, "flow", None)
        if flow is not None:
            flow._is_writable_event = LightEvent(value=flow._is_writable_event.is_set())

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        cycle = self.cycle
        # Just created (its task has not run yet; the body callbacks follow this one).
        if cycle is not None and isinstance(cycle.message_event, asyncio.Event):
            cycle.message_event = LightEvent(value=cycle.message_event.is_set())  # type: ignore[assignment]

    def handle_websocket_upgrade(self) -> None:
        super().handle_websocket_upgrade()
        # This protocol is done: the transport now calls the WebSocket protocol.
        self.parser = None  # type: ignore[assignment]
