"""One task keeps every SSE stream of the process alive, instead of a timer per
stream per wake-up (which profiling showed to cost a third of the event loop under
broadcast load): it asks the queues of SSE streams that wrote nothing for
`heartbeat_s` for a heartbeat, and aborts writers stuck in one send longer than
`send_timeout_s` (a peer that stopped reading, or a half-open TCP connection).

The heartbeat goes one way, fan-out to the transport: the ticker calls the
queue's `heartbeat()` (`service/fanout/queue.py:DeliveryQueue`), which wakes the
stream's writer like a delivery does; the writer (`service/transports/sse.py`)
takes it as a keep-alive comment. Nothing here calls back into a transport.

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
import time
from typing import Any, Final, Protocol

HEARTBEAT_TICK_S: Final = 0.1
STALL_CHECK_S: Final = 1.0


class Watched(Protocol):
    """A writer watched for stalls."""

    # Monotonic start of the send in progress, 0.0 when none.
    send_started: float

    def abort(self) -> None: ...


class Heartbeats(Protocol):
    """What takes a stream's heartbeats: its queue (`DeliveryQueue`)."""

    # Monotonic time of the next heartbeat, pushed back by every write.
    next_heartbeat: float

    def heartbeat(self) -> None: ...


class SendWatch:
    """One writer as the ticker sees it (both transports): `send_started` while a
    send is in progress, `abort` cancels the writer's task once a send is stuck.
    The SSE response mixes it in, so an SSE stream pays no extra object for it."""

    def __init__(self) -> None:
        self.send_started = 0.0
        self.task: asyncio.Task[Any] | None = None
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True
        if self.task is not None:
            self.task.cancel()

    def release(self) -> None:
        """Forget the task: its stored exception holds frames that hold this watch,
        a cycle otherwise."""
        self.task = None


class _Entry:
    """A heap slot. `discard` empties it at once, so that a closed stream is not
    kept alive by the heap until its slot comes up."""

    __slots__ = ("stream",)

    def __init__(self, stream: Heartbeats | None) -> None:
        self.stream: Heartbeats | None = stream


class KeepAlive:
    def __init__(self, *, heartbeat_s: float, send_timeout_s: float) -> None:
        self.heartbeat_s = heartbeat_s
        self.send_timeout_s = send_timeout_s
        self._streams: dict[Watched, _Entry] = {}
        self._due: list[tuple[float, int, _Entry]] = []
        self._order = itertools.count()
        self._next_stall_check = 0.0

    def add(self, watch: Watched, *, heartbeats: Heartbeats | None = None) -> None:
        """Watch `watch`'s writer for stalled sends and, with `heartbeats` (the
        stream's queue), keep the stream alive."""
        entry = self._streams[watch] = _Entry(heartbeats)
        if heartbeats is not None:
            heartbeats.next_heartbeat = time.monotonic() + self.heartbeat_s
            heapq.heappush(self._due, (heartbeats.next_heartbeat, next(self._order), entry))

    def discard(self, watch: Watched) -> None:
        entry = self._streams.pop(watch, None)
        if entry is not None:
            # The empty slot is dropped when it comes up.
            entry.stream = None

    def tick(self, now: float) -> None:
        due = self._due
        while due and due[0][0] <= now:
            _, _, entry = heapq.heappop(due)
            queue = entry.stream
            if queue is None:
                continue
            if queue.next_heartbeat > now:
                # It wrote since: come back when its new deadline is reached.
                heapq.heappush(due, (queue.next_heartbeat, next(self._order), entry))
                continue
            queue.next_heartbeat = now + self.heartbeat_s
            heapq.heappush(due, (queue.next_heartbeat, next(self._order), entry))
            queue.heartbeat()
        if now >= self._next_stall_check:
            self._next_stall_check = now + STALL_CHECK_S
            for watch in [w for w in self._streams if w.send_started]:
                if now - watch.send_started > self.send_timeout_s:
                    self.discard(watch)
                    watch.abort()

    async def run(self) -> None:
        """The supervised loop."""
        while True:
            await asyncio.sleep(min(HEARTBEAT_TICK_S, self.heartbeat_s / 2))
            self.tick(time.monotonic())
