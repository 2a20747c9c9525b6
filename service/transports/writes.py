"""The streams woken during one loop iteration, written by one callback at its end
(`WRITES`): a batch of messages from the listener is one write per stream, not a
write per message, and a queue that the hub fills beyond its bound within one
batch is too slow. Shared by both transports' socket-owning streams
(`service/transports/sse_stream.py:SseStream`, `service/transports/ws_stream.py:WsStream`).
"""

from __future__ import annotations

import asyncio
from typing import Final, Protocol


class Due(Protocol):
    """A stream with something to write."""

    def write_due(self) -> None: ...


class Writes:
    """Streams due for a write at the end of this loop iteration (not a callback
    per stream)."""

    def __init__(self) -> None:
        self._due: list[Due] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def add(self, stream: Due) -> None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # A new event loop (tests run several in one process): what the old
            # one left due belongs to connections gone with it.
            self._loop, self._due = loop, []
        if not self._due:
            loop.call_soon(self._flush)
        self._due.append(stream)

    def _flush(self) -> None:
        due, self._due = self._due, []
        for stream in due:
            stream.write_due()


WRITES: Final = Writes()
