"""A small SSE client for tests: frames are parsed as they arrive and can be
awaited with a timeout (never a fixed sleep)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Frame:
    event: str = "message"
    data: str = ""
    id: str | None = None
    retry: int | None = None
    comments: list[str] = field(default_factory=list)

    def json(self) -> Any:
        return json.loads(self.data)


def parse_frames(lines: list[str]) -> list[Frame]:
    frames: list[Frame] = []
    current = Frame()
    touched = False
    for line in lines:
        if line == "":
            if touched:
                frames.append(current)
            current, touched = Frame(), False
            continue
        touched = True
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "":
            current.comments.append(value)
        elif name == "event":
            current.event = value
        elif name == "data":
            current.data = f"{current.data}\n{value}" if current.data else value
        elif name == "id":
            current.id = value
        elif name == "retry":
            current.retry = int(value)
    return frames


class SSEStream:
    """An open event stream; `frames` fills in the background."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.frames: list[Frame] = []
        self.ended = asyncio.Event()
        self._changed = asyncio.Condition()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        lines: list[str] = []
        try:
            async for line in self.response.aiter_lines():
                lines.append(line)
                if line == "":
                    new = parse_frames(lines)
                    lines = []
                    if new:
                        async with self._changed:
                            self.frames.extend(new)
                            self._changed.notify_all()
        except (httpx.HTTPError, asyncio.CancelledError):
            pass
        finally:
            if lines:
                self.frames.extend(parse_frames([*lines, ""]))
            self.ended.set()
            async with self._changed:
                self._changed.notify_all()

    @property
    def events(self) -> list[Frame]:
        """Frames that carry an event (not comments-only heartbeats, bare retry or the
        `resume_point` that follows a fresh stream's id-only block)."""
        return [
            f for f in self.frames if (f.data or f.event != "message") and f.event != "resume_point"
        ]

    def of_type(self, prefix: str = "appointment.") -> list[Frame]:
        return [f for f in self.events if f.event.startswith(prefix)]

    async def wait_for(
        self, predicate: Callable[[SSEStream], bool], timeout_s: float = 10.0, what: str = ""
    ) -> None:
        async def check() -> None:
            async with self._changed:
                while not predicate(self):
                    if self.ended.is_set():
                        raise AssertionError(f"stream ended before: {what}")
                    await self._changed.wait()

        try:
            await asyncio.wait_for(check(), timeout_s)
        except TimeoutError:
            raise AssertionError(f"timed out after {timeout_s}s waiting for: {what}") from None

    async def wait_events(
        self, count: int, prefix: str = "appointment.", timeout_s: float = 10.0
    ) -> list[Frame]:
        await self.wait_for(lambda s: len(s.of_type(prefix)) >= count, timeout_s, f"{count} events")
        return self.of_type(prefix)

    async def wait_ended(self, timeout_s: float = 10.0) -> None:
        try:
            await asyncio.wait_for(self.ended.wait(), timeout_s)
        except TimeoutError:
            raise AssertionError(f"stream did not end within {timeout_s}s") from None

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self.response.aclose()


async def opened(stream: SSEStream) -> SSEStream:
    """`stream` once its first frame arrived (the server subscribed it)."""
    assert stream.response.status_code == 200
    await stream.wait_for(lambda s: bool(s.frames), what="stream open")
    return stream


@contextlib.asynccontextmanager
async def open_sse(
    client: httpx.AsyncClient, url: str, *, headers: dict[str, str] | None = None
) -> AsyncIterator[SSEStream]:
    request = client.build_request("GET", url, headers=headers)
    response = await client.send(request, stream=True)
    stream = SSEStream(response)
    try:
        yield stream
    finally:
        await stream.close()
