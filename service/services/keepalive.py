"""One task keeps every SSE stream of the process alive, instead of a timer per
stream per wake-up (which profiling showed to cost a third of the event loop under
broadcast load): it asks streams that wrote nothing for `heartbeat_s` for a
heartbeat, and aborts writers stuck in one send longer than `send_timeout_s`
(a peer that stopped reading, or a half-open TCP connection).

Heartbeats come from a heap ordered by due time and are handed out every
`HEARTBEAT_TICK_S`, so they stay spread out as the streams' writes spread them;
a whole second's worth at once would be a burst of thousands of writes that
delays real events. A write only moves the stream's own `next_heartbeat`; the
heap entry is corrected lazily when it comes up.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from collections.abc import Callable
from typing import Any, Final, Protocol

HEARTBEAT_TICK_S: Final = 0.1
STALL_CHECK_S: Final = 1.0


class KeptAlive(Protocol):
    # Monotonic time of the next heartbeat, pushed back by every write.
    next_heartbeat: float
    # Monotonic start of the send in progress, 0.0 when none.
    send_started: float

    def heartbeat(self) -> None: ...

    def abort(self) -> None: ...


class SendWatch:
    """One writer as the ticker sees it (both transports): `send_started` while a
    send is in progress, `abort` cancels the writer's task once a send is stuck;
    `heartbeat` calls `on_heartbeat` (SSE) or does nothing (WebSocket: uvicorn's
    protocol pings keep it alive). The SSE response mixes it in, so an SSE stream
    pays no extra object for it."""

    def __init__(self, on_heartbeat: Callable[[], None] | None = None) -> None:
        self.next_heartbeat = math.inf
        self.send_started = 0.0
        self.task: asyncio.Task[Any] | None = None
        self.aborted = False
        self._on_heartbeat = on_heartbeat

    def heartbeat(self) -> None:
        if self._on_heartbeat is not None:
            self._on_heartbeat()

    def abort(self) -> None:
        self.aborted = True
        if self.task is not None:
            self.task.cancel()

    def release(self) -> None:
        """Forget the task: its stored exception holds frames that hold this watch,
        a cycle otherwise."""
        self.task = None
        self._on_heartbeat = None


class _Entry:
    """A heap slot. `discard` empties it at once, so that a closed stream is not
    kept alive by the heap until its slot comes up."""

    __slots__ = ("stream",)

    def __init__(self, stream: KeptAlive) -> None:
        self.stream: KeptAlive | None = stream


class KeepAlive:
    def __init__(self, *, heartbeat_s: float, send_timeout_s: float) -> None:
        self.heartbeat_s = heartbeat_s
        self.send_timeout_s = send_timeout_s
        self._streams: dict[KeptAlive, _Entry] = {}
        self._due: list[tuple[float, int, _Entry]] = []
        self._order = itertools.count()
        self._next_stall_check = 0.0

    def add(self, stream: KeptAlive, *, heartbeats: bool = True) -> None:
        """Watch `stream` for stalled sends and, with `heartbeats`, keep it alive."""
        entry = self._streams[stream] = _Entry(stream)
        if heartbeats:
            stream.next_heartbeat = time.monotonic() + self.heartbeat_s
            heapq.heappush(self._due, (stream.next_heartbeat, next(self._order), entry))

    def discard(self, stream: KeptAlive) -> None:
        entry = self._streams.pop(stream, None)
        if entry is not None:
            # The empty slot is dropped when it comes up.
            entry.stream = None

    def tick(self, now: float) -> None:
        due = self._due
        while due and due[0][0] <= now:
            _, _, entry = heapq.heappop(due)
            stream = entry.stream
            if stream is None:
                continue
            if stream.next_heartbeat > now:
                # It wrote since: come back when its new deadline is reached.
                heapq.heappush(due, (stream.next_heartbeat, next(self._order), entry))
                continue
            stream.next_heartbeat = now + self.heartbeat_s
            heapq.heappush(due, (stream.next_heartbeat, next(self._order), entry))
            stream.heartbeat()
        if now >= self._next_stall_check:
            self._next_stall_check = now + STALL_CHECK_S
            for stream in [s for s in self._streams if s.send_started]:
                if now - stream.send_started > self.send_timeout_s:
                    self.discard(stream)
                    stream.abort()

    async def run(self) -> None:
        """The supervised loop."""
        while True:
            await asyncio.sleep(min(HEARTBEAT_TICK_S, self.heartbeat_s / 2))
            self.tick(time.monotonic())
