"""A subscription's queue and what goes through it.

- `Delivery`: one event (or notice) from the hub, shared by every queue of its
  channel in this process; framed once, on first use, by `service/wire/`.
- `DeliveryQueue`: the bounded queue the hub offers deliveries to without waiting
  (`put_nowait`). A full queue closes itself as "too slow" (its client resumes
  from history); nobody ever waits for a slow client. Its writer wakes once,
  drains everything queued and writes it in one go: under load that coalescing
  is what keeps a Python process near native peers. A queue also carries its
  connection's principal (what revocations match) and its close reason (the
  first one wins).
- `Waker`: the queue's wake-up, shared by every queue of one WebSocket connection
  so that its one writer waits on all of them.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Protocol

from notify_publisher.events import EventStored

from service import metrics
from service.brokers.base import StreamKey, parse_stream_id
from service.fanout.closing import CloseReason
from service.services.principal import Principal


class Delivery:
    """One event (or control notice) from the hub, for every queue of a channel.
    Its SSE block (alone and as a chunk) and WebSocket text are built once, by
    `service/wire/`, on first use, and kept here (`sse`, `sse_chunk`, `ws`) for the
    channel's other queues."""

    __slots__ = (
        "appointment_id",
        "id",
        "id_key",
        "is_event",
        "kind",
        "payload",
        "published_at",
        "sse",
        "sse_chunk",
        "ws",
    )

    def __init__(
        self,
        *,
        kind: str,
        payload: str,
        event_id: str | None = None,
        appointment_id: str | None = None,
        published_at: float | None = None,
    ) -> None:
        self.kind = kind
        self.is_event = kind.startswith("appointment.")
        self.payload = payload
        self.id = event_id
        self.id_key: StreamKey | None = parse_stream_id(event_id) if event_id else None
        self.appointment_id = appointment_id
        self.published_at = published_at
        self.sse: bytes | None = None
        self.sse_chunk: bytes | None = None
        self.ws: str | None = None

    @classmethod
    def from_event(cls, event: EventStored) -> Delivery:
        return cls(
            kind=event.type.value,
            payload=event.model_dump_json(exclude_none=True),
            event_id=event.id,
            appointment_id=event.appointment_id,
            published_at=event.published_at.timestamp() if event.published_at else None,
        )

    @classmethod
    def gap(cls, oldest_id: str | None) -> Delivery:
        """History no longer holds everything after the client's last id: refetch."""
        return cls(kind="gap", payload=json.dumps({"oldest_id": oldest_id}))


class Wakeup(Protocol):
    """What a queue wakes: a `Waker` (a writer task sleeps on it), or a stream that
    writes at once (`service/transports/sse_stream.py:SseStream`)."""

    def set(self) -> None: ...

    def clear(self) -> None: ...


class Waker:
    """The smallest "something happened" signal: a future exists only while the
    writer sleeps. An idle stream holds no deque, unlike `asyncio.Event` (that
    matters at ten thousand streams per process)."""

    __slots__ = ("_future", "_set")

    def __init__(self) -> None:
        self._future: asyncio.Future[None] | None = None
        self._set = False

    def set(self) -> None:
        self._set = True
        future = self._future
        if future is not None and not future.done():
            future.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> None:
        if self._set:
            return
        self._future = asyncio.get_running_loop().create_future()
        try:
            await self._future
        finally:
            self._future = None


class DeliveryQueue:
    """A subscription's bounded queue (or a WebSocket connection's own, which holds
    no channel) and the state its writer needs."""

    __slots__ = (
        "_items",
        "_maxlen",
        "_wakeup",
        "appointment_id",
        "close_reason",
        "delivered",
        "dropped",
        "heartbeat_due",
        "next_heartbeat",
        "principal",
        "skip_through",
        "transport",
    )

    def __init__(
        self,
        *,
        maxlen: int,
        transport: str,
        principal: Principal | None = None,
        appointment_id: str | None = None,
        wakeup: Wakeup | None = None,
    ) -> None:
        # None while empty: an idle stream keeps no list (72 bytes, issue 23).
        self._items: list[Delivery] | None = None
        self._maxlen = maxlen
        # The queues of one connection (a WebSocket holding several
        # subscriptions) share one waker, so that its one writer waits on all.
        self._wakeup: Wakeup = wakeup if wakeup is not None else Waker()
        self.transport = transport
        self.principal = principal
        self.appointment_id = appointment_id
        self.close_reason: CloseReason | None = None
        self.delivered = 0
        self.dropped = 0
        self.heartbeat_due = False
        # Monotonic time of the next keep-alive (`service/fanout/clock.py`), pushed
        # back by every write of its stream (SSE only).
        self.next_heartbeat = math.inf
        # After a replay, live events up to this id were already sent: skip them.
        self.skip_through: StreamKey | None = None

    def put_nowait(self, item: Delivery) -> bool:
        """Queue `item` without waiting; False when it was not queued."""
        if self.close_reason is not None:
            return False
        if (
            self.appointment_id is not None
            and item.appointment_id is not None
            and item.appointment_id != self.appointment_id
        ):
            return False
        items = self._items
        if items is None:
            # The usual case under a broadcast: an empty queue (the bound is >= 1).
            self._items = [item]
        elif len(items) >= self._maxlen:
            self.dropped += 1
            metrics.SLOW_CONSUMERS.labels(transport=self.transport).inc()
            self.close(CloseReason.TOO_SLOW)
            return False
        else:
            items.append(item)
        self._wakeup.set()
        return True

    def close(self, reason: CloseReason) -> None:
        """Ask the writer to end the stream (first reason wins)."""
        if self.close_reason is None:
            self.close_reason = reason
        self._wakeup.set()

    def heartbeat(self) -> None:
        """Wake the writer for a keep-alive even though nothing is queued (the
        process' clock calls it when the stream was quiet)."""
        self.heartbeat_due = True
        self._wakeup.set()

    def hand_to(self, wakeup: Wakeup | None) -> None:
        """From now on wake `wakeup` (a stream that writes at once), and wake it now
        if anything is pending; None: a plain `Waker` again (drops the stream)."""
        if wakeup is None:
            self._wakeup = Waker()
            return
        self._wakeup = wakeup
        if self._items or self.heartbeat_due or self.close_reason is not None:
            wakeup.set()

    async def wait(self) -> None:
        """Sleep until something is queued, a heartbeat is due, or it is closed."""
        wakeup = self._wakeup
        assert isinstance(wakeup, Waker), "a handed-over queue has no writer to wait"
        await wakeup.wait()
        wakeup.clear()

    def drain(self) -> list[Delivery]:
        """Everything queued, oldest first, minus what a replay already sent."""
        items, self._items = self._items, None
        if items is None:
            return []
        skip = self.skip_through
        if skip is not None:
            items = [i for i in items if i.id_key is None or i.id_key > skip]
            if any(i.id_key is not None for i in items):
                # A newer id went through: ids only grow from here on.
                self.skip_through = None
        if len(items) == 1:
            # A broadcast's usual case, once per stream: no generator.
            self.delivered += items[0].is_event
        else:
            self.delivered += sum(i.is_event for i in items)
        return items

    def __len__(self) -> int:
        return len(self._items) if self._items is not None else 0
