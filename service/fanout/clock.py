"""One clock for every stream of the process: heartbeats, token expiry and
stalled sends, instead of timers per stream (which profiling showed to cost a
third of the event loop under broadcast load when they were per wake-up).

It keeps one timing wheel: slices `TICK_S` wide, each the list of the slots due
in it, and a heap of the slice numbers that hold any. It wakes every `TICK_S`;
each tick walks only the slices begun by then, so a quiet stream costs no wake-up
of its own and there is no `TimerHandle` per stream. A registration is one small
slot object in one slice's list, reused from slice to slice: no heap entry, due
time or sequence number per stream (what an idle SSE stream kept in the heap
version: 0.69 KiB, 13.7 blocks, in tracemalloc). Three things come due:

- **Heartbeats** (SSE): the queue of a stream that wrote nothing for
  `heartbeat_s` is asked for one (`heartbeat()`, `service/fanout/queue.py:DeliveryQueue`),
  which wakes the stream's writer like a delivery does; the writer
  (`service/transports/sse.py`) takes it as a keep-alive comment. One way: nothing
  here calls back into a transport. A write only moves the queue's own
  `next_heartbeat`; its slot is moved lazily when it comes up, so the
  heartbeats stay spread out as the streams' writes spread them (a whole second's
  worth at once would be a burst of thousands of writes that delays real events).
- **Stalled sends** (both transports): the same slot comes up at the latest
  `send_timeout_s` after a send started, and a writer still stuck in it (a peer
  that stopped reading, a half-open TCP connection) is aborted. A watch that takes
  no heartbeats (a WebSocket's writer task under other servers) has a slot for
  this alone. A WebSocket stream is its own `Heartbeats`: its `heartbeat` sends a
  protocol ping or checks the pong, and sets its own next time.
- **Token expiry**: an owner (a `Connection`: `SseConnection`, `WsConnection`) registers
  its token's expiry with `expiry`; the clock calls its `warn_expiring` shortly
  before (`EXPIRY_WARNING_S`, or at half the remaining time for short tokens) and
  its `expire` at the expiry. Registering again (a WebSocket's fresh `auth`)
  replaces the earlier one.

`discard` forgets an owner at once: its slots are emptied where they stand in the
wheel (`_Slot.owner = None`), so a closed stream is freed by reference counting
alone, not kept alive until its slot comes up. Emptied slots are dropped when they
come up, or all at once when they outnumber the live ones.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Callable
from typing import Any, Final, Protocol

import structlog

log = structlog.get_logger("service.clock")

TICK_S: Final = 0.1
# `token_expiring` is sent this long before the token's expiry (or at half the
# remaining lifetime for short tokens), so a client can renew without a gap.
EXPIRY_WARNING_S: Final = 60.0
# The wheel is rebuilt without its emptied slots once they are more than half of it
# (and at least this many): re-registered expiries leave one each until their time.
COMPACT_MIN: Final = 1024


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


class Expiring(Protocol):
    """What a token's expiry ends: a connection (`SseConnection`, `WsConnection`)."""

    def warn_expiring(self, expires_at: int) -> None:
        """Send `token_expiring` (the token's `exp`, Unix seconds)."""

    def expire(self) -> None:
        """Close with `CloseReason.TOKEN_EXPIRED`."""


class SendWatch:
    """One writer as the clock sees it (both transports): `send_started` while a
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


class _Slot:
    """One registration in the wheel; `owner` None once emptied (the slot is
    dropped when its slice comes up). A slot carries no due time of its own: a
    watch's is read from its owner (`send_started`, `next_heartbeat`) when its
    slice comes up, an expiry's is `close_due` (less `lead` until warned)."""

    __slots__ = ("owner",)

    owner: Any


class _Watch(_Slot):
    """A writer watched for stalls, with the queue that takes its heartbeats."""

    __slots__ = ("heartbeats",)

    def __init__(self, watch: Watched, heartbeats: Heartbeats | None) -> None:
        self.owner: Watched | None = watch
        self.heartbeats = heartbeats


class _Expiry(_Slot):
    """A token's expiry: due `lead` seconds before `close_due` for the warning,
    then at `close_due` for the close (`lead` None once warned). `expires_at` is
    the caller's own object (the principal's), not a copy."""

    __slots__ = ("close_due", "expires_at", "lead")

    def __init__(self, owner: Expiring, expires_at: float, close_due: float, lead: float) -> None:
        self.owner: Expiring | None = owner
        self.expires_at = expires_at
        self.close_due = close_due
        self.lead: float | None = lead


class Clock:
    def __init__(
        self,
        *,
        heartbeat_s: float,
        send_timeout_s: float,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.heartbeat_s = heartbeat_s
        self.send_timeout_s = send_timeout_s
        # Due times are monotonic; token expiries (Unix times) are converted once,
        # when registered, as the loop's own timers would.
        self._monotonic = monotonic
        self._wall = wall
        self._watches: dict[object, _Watch] = {}
        self._expiries: dict[object, _Expiry] = {}
        # The wheel: slice number (`_slice`) → the slots due in it, and a heap of
        # the slice numbers that have any.
        self._slices: dict[int, list[_Slot]] = {}
        self._slice_heap: list[int] = []
        self._size = 0
        self._emptied = 0
        self._ticking = False

    def __len__(self) -> int:
        """Slots in the wheel, emptied ones included."""
        return self._size

    # --- registration --------------------------------------------------------------

    def add(
        self,
        watch: Watched,
        *,
        heartbeats: Heartbeats | None = None,
        first_heartbeat_s: float | None = None,
    ) -> None:
        """Watch `watch`'s writer for stalled sends and, with `heartbeats` (the
        stream's queue, or a WebSocket stream's pings), keep the stream alive: the
        first heartbeat `first_heartbeat_s` from now (default `heartbeat_s`), every
        later one when `heartbeats.next_heartbeat` says."""
        self._empty_watch(watch)
        now = self._monotonic()
        slot = self._watches[watch] = _Watch(watch, heartbeats)
        due = now + self.send_timeout_s
        if heartbeats is not None:
            first = self.heartbeat_s if first_heartbeat_s is None else first_heartbeat_s
            heartbeats.next_heartbeat = now + first
            due = min(due, heartbeats.next_heartbeat)
        self._push(due, slot)

    def expiry(self, owner: Expiring, expires_at: float) -> None:
        """Warn `owner` shortly before `expires_at` (Unix seconds) and expire it
        then, replacing any expiry it registered before; none when `expires_at <= 0`
        (a token without expiry)."""
        self._empty_expiry(owner)
        if expires_at <= 0:
            return
        now = self._monotonic()
        remaining = expires_at - self._wall()
        close_due = now + max(0.0, remaining)
        if remaining / 2 >= EXPIRY_WARNING_S:
            lead = EXPIRY_WARNING_S  # the common case: no float of its own
        else:
            # A short token is warned at half its remaining life.
            lead = close_due - (now + max(0.0, remaining - remaining / 2))
        slot = self._expiries[owner] = _Expiry(owner, expires_at, close_due, lead)
        self._push(close_due - lead, slot)

    def abort_sends(self) -> int:
        """Abort every writer stuck in a send now, whatever its timeout; how many.
        The end of the shutdown drain: a peer that has not taken its reconnect
        hint by then is not reading, and the process must not wait for it."""
        stuck = [
            slot.owner
            for slot in self._watches.values()
            if slot.owner is not None and slot.owner.send_started
        ]
        for watch in stuck:
            self._empty_watch(watch)
            _call(watch.abort)
        return len(stuck)

    def holds(self, owner: object) -> bool:
        """Whether anything is registered for `owner` (a watch or an expiry)."""
        return owner in self._watches or owner in self._expiries

    def discard(self, owner: object) -> None:
        """Forget everything registered for `owner`, at once."""
        self._empty_watch(owner)
        self._empty_expiry(owner)

    def _empty_watch(self, watch: object) -> None:
        slot = self._watches.pop(watch, None)
        if slot is not None:
            slot.owner = slot.heartbeats = None
            self._emptied_one()

    def _empty_expiry(self, owner: object) -> None:
        slot = self._expiries.pop(owner, None)
        if slot is not None:
            slot.owner = None
            self._emptied_one()

    def _emptied_one(self) -> None:
        self._emptied += 1
        self._compact_if_mostly_empty()

    def _compact_if_mostly_empty(self) -> None:
        if self._ticking or self._emptied < COMPACT_MIN or self._emptied * 2 <= self._size:
            return
        slices: dict[int, list[_Slot]] = {}
        for number, slots in self._slices.items():
            live = [slot for slot in slots if slot.owner is not None]
            if live:
                slices[number] = live
        self._slices = slices
        self._slice_heap = list(slices)
        heapq.heapify(self._slice_heap)
        self._size = sum(map(len, slices.values()))
        self._emptied = 0

    def _push(self, due: float, slot: _Slot) -> None:
        number = _slice(due)
        slots = self._slices.get(number)
        if slots is None:
            self._slices[number] = [slot]
            heapq.heappush(self._slice_heap, number)
        else:
            slots.append(slot)
        self._size += 1

    # --- the tick ------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Run what is due by `now` (monotonic): every slot of the slices up to
        `now`'s is looked at; what is not due yet (the rest of `now`'s own slice,
        a write that pushed a heartbeat back) is put back for a later tick. O(1)
        when no slice is due."""
        heap = self._slice_heap
        current = _slice(now)
        if not heap or heap[0] > current:
            return
        # Taken out first: what goes back into the current slice waits for the
        # next tick instead of being looked at again in this one.
        due: list[list[_Slot]] = []
        while heap and heap[0] <= current:
            due.append(self._slices.pop(heapq.heappop(heap)))
        self._ticking = True
        try:
            for slots in due:
                self._size -= len(slots)
                for slot in slots:
                    if slot.owner is None:
                        self._emptied -= 1
                    elif isinstance(slot, _Watch):
                        self._watch_due(slot, now)
                    else:
                        assert isinstance(slot, _Expiry)
                        self._expiry_due(slot, now)
        finally:
            self._ticking = False
        self._compact_if_mostly_empty()

    def _watch_due(self, slot: _Watch, now: float) -> None:
        watch = slot.owner
        assert watch is not None
        started = watch.send_started
        if started and now - started >= self.send_timeout_s:
            del self._watches[watch]
            slot.owner = slot.heartbeats = None
            _call(watch.abort)
            return
        # It comes up again when a send in progress would be stuck, else after
        # `send_timeout_s` (when a send starting now would be), or sooner for a
        # heartbeat.
        next_due = (started or now) + self.send_timeout_s
        heartbeats = slot.heartbeats
        if heartbeats is not None:
            if heartbeats.next_heartbeat <= now:
                heartbeats.next_heartbeat = now + self.heartbeat_s
                # It may set its own next time (a WebSocket: its ping interval, or
                # its pong deadline), sooner or later than `heartbeat_s`.
                _call(heartbeats.heartbeat)
            # Else it wrote since: come back when its new deadline is reached.
            self._push(min(next_due, heartbeats.next_heartbeat), slot)
            return
        self._push(next_due, slot)

    def _expiry_due(self, slot: _Expiry, now: float) -> None:
        owner = slot.owner
        assert owner is not None
        lead = slot.lead
        if lead is not None:
            warn_due = slot.close_due - lead
            if warn_due > now:
                self._push(warn_due, slot)  # later in this tick's slice
                return
            slot.lead = None
            if slot.close_due > now:
                self._push(slot.close_due, slot)
                _call(owner.warn_expiring, int(slot.expires_at))
                return
            # The close comes after the warning, in this same tick when both are due.
            _call(owner.warn_expiring, int(slot.expires_at))
            if slot.owner is None:
                # The warning ended or replaced it: counted as emptied, in no slice.
                self._emptied -= 1
                return
        elif slot.close_due > now:
            self._push(slot.close_due, slot)
            return
        del self._expiries[owner]
        slot.owner = None
        _call(owner.expire)

    async def run(self) -> None:
        """The supervised loop."""
        while True:
            await asyncio.sleep(min(TICK_S, self.heartbeat_s / 2))
            self.tick(self._monotonic())


# The wheel's slices are `TICK_S` wide: a slot is put in the slice of its due time
# and looked at by the first tick at or after that slice's start. Any monotonic
# mapping works (a tick's slice is never before the slice of what is due by then);
# due times past `_LAST_DUE` (a token "expiring" in 30,000 years) share its slice.
_SLICES_PER_S: Final = 1 / TICK_S
_LAST_DUE: Final = 1e12


def _slice(due: float) -> int:
    return int(min(due, _LAST_DUE) * _SLICES_PER_S)


def _call(callback: Callable[..., object], *args: object) -> None:
    """One owner's failure is logged like a failing loop callback's, and does not
    stop the tick for the others."""
    try:
        callback(*args)
    except Exception:
        log.exception("clock_callback_failed", callback=getattr(callback, "__qualname__", "?"))
