"""A browser's EventSource, and nothing more, for tests of what a page that only
calls `new EventSource(url)` experiences (WHATWG HTML, "Server-sent events"):

- it reconnects to the *same URL* after the last `retry:` delay, sending the last
  `id:` it saw as `Last-Event-ID`, whenever the stream ends or cannot connect;
- any answer that is not a 200 `text/event-stream` closes it for good.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import httpx

from tests.support.sse import Frame, parse_frames

# EventSource's default reconnection time before any `retry:` was received.
DEFAULT_RETRY_MS = 3000


class EventSourceEmulator:
    def __init__(self, client: httpx.AsyncClient, url: str) -> None:
        self._client = client
        self.url = url
        self.retry_ms = DEFAULT_RETRY_MS
        self.last_event_id: str | None = None
        self.frames: list[Frame] = []
        self.opened = 0
        self.closed_for_good = False
        self.last_status: int | None = None
        self._changed = asyncio.Condition()

    @property
    def events(self) -> list[Frame]:
        return [f for f in self.frames if f.event.startswith("appointment.")]

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def run(self) -> None:
        while True:
            headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
            if self.last_event_id is not None:
                headers["Last-Event-ID"] = self.last_event_id
            try:
                async with self._client.stream("GET", self.url, headers=headers) as response:
                    self.last_status = response.status_code
                    content_type = response.headers.get("content-type", "")
                    if response.status_code != 200 or not content_type.startswith(
                        "text/event-stream"
                    ):
                        self.closed_for_good = True
                        await self._notify()
                        return
                    self.opened += 1
                    await self._notify()
                    await self._read(response)
            except httpx.TransportError:
                pass  # refused or reset: the browser retries, silently
            # The browser waits `retry` ms, then reconnects (the test's clock is not
            # involved: this is the emulated client's own behaviour).
            await asyncio.sleep(self.retry_ms / 1000)

    async def _read(self, response: httpx.Response) -> None:
        lines: list[str] = []
        async for line in response.aiter_lines():
            lines.append(line)
            if line != "":
                continue
            for frame in parse_frames(lines):
                if frame.retry is not None:
                    self.retry_ms = frame.retry
                if frame.id is not None:
                    self.last_event_id = frame.id
                self.frames.append(frame)
            lines = []
            await self._notify()

    async def wait_for(
        self,
        predicate: Callable[[EventSourceEmulator], bool],
        timeout_s: float = 10.0,
        what: str = "",
    ) -> None:
        async def check() -> None:
            async with self._changed:
                while not predicate(self):
                    if self.closed_for_good:
                        raise AssertionError(
                            f"EventSource closed for good (HTTP {self.last_status}) before: {what}"
                        )
                    await self._changed.wait()

        try:
            await asyncio.wait_for(check(), timeout_s)
        except TimeoutError:
            raise AssertionError(f"timed out after {timeout_s}s waiting for: {what}") from None


@contextlib.asynccontextmanager
async def event_source(client: httpx.AsyncClient, url: str) -> AsyncIterator[EventSourceEmulator]:
    source = EventSourceEmulator(client, url)
    task = asyncio.create_task(source.run())
    try:
        yield source
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
