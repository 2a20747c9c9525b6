"""The streams woken during one loop iteration, written by one callback at its end
(a `Writes` per transport): a batch of messages from the listener is one write per
stream, not a write per message, and a queue that the hub fills beyond its bound
within one batch is too slow. Used by both transports' socket-owning streams
(`service/transports/sse_stream.py:SseStream`, `service/transports/ws_stream.py:WsStream`).

What a broadcast pays per stream is kept to the stream's own work: the clock is
read once per flush (`now`), and the deliveries written are counted once per flush
(`notify_deliveries_total`), not once per stream. The count is complete when the
callback returns, before anything else on the loop (a `/metrics` scrape) runs.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

import structlog

log = structlog.get_logger("service.stream")


class Due(Protocol):
    """A stream with something to write."""

    def write_due(self, now: float) -> int:
        """Write what is due (`now`: the flush's monotonic time); the number of
        deliveries written, for the transport's counter."""
        ...


class Tally(Protocol):
    """Where a flush's deliveries are counted (a Prometheus counter's child)."""

    def inc(self, amount: float = 1) -> None: ...


class Writes:
    """Streams due for a write at the end of this loop iteration (not a callback
    per stream), and the counter of the deliveries they write."""

    __slots__ = ("_delivered", "_due", "_loop")

    def __init__(self, delivered: Tally) -> None:
        self._delivered = delivered
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
        now = time.monotonic()
        delivered = 0
        for stream in due:
            try:
                delivered += stream.write_due(now)
            except Exception:
                # Each stream ends itself on the errors it knows; whatever still
                # escapes is that stream's alone: the streams after it in this
                # flush are written all the same (none is left marked due).
                log.exception("stream_write_failed")
        if delivered:
            self._delivered.inc(delivered)
