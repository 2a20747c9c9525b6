"""Local fan-out: one pub/sub message becomes one `Delivery`, shared by every
connection of that channel in this process.

- The hub's listener (`service/services/listener.py`) pulls every message the
  broker received and hands it to `Hub.on_message`; the hub validates it once, makes one `Delivery` per channel (framed once, on first use,
  by `service/wire/`), and offers it to each subscriber
  with `put_nowait` into a bounded queue. A full queue closes that subscriber as
  "too slow" (it resumes from history); nobody ever waits for a slow client.
- A subscriber's writer wakes once, drains everything queued, and writes it in one
  go: under load that coalescing is what keeps a Python process near native peers.
- Per channel the hub remembers the last history id it delivered, drops duplicates
  (a backfill and the live channel may overlap) and, after the broker reconnects,
  backfills every active channel from history so connected clients miss nothing.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable, Collection, Coroutine
from typing import Any, Protocol

import structlog
from notify_publisher.events import MAX_EVENT_BYTES, EventStored
from notify_publisher.keys import RedisKeys
from pydantic import ValidationError

from service import metrics
from service.brokers.base import StreamKey as StreamKey
from service.brokers.base import parse_stream_id as parse_stream_id
from service.services.closing import CloseReason as CloseReason
from service.services.principal import Principal

log = structlog.get_logger(__name__)
SUBSCRIBE_BATCH = metrics.REDIS_BATCH_SIZE.labels(operation="subscribe")


class Delivery:
    """One event (or control notice) from the hub, for every subscriber of a channel.
    Its SSE block and WebSocket text are built once, by `service/wire/`, on first
    use, and kept here (`sse`, `ws`) for the channel's other subscribers."""

    __slots__ = (
        "appointment_id",
        "id",
        "id_key",
        "is_event",
        "kind",
        "payload",
        "published_at",
        "sse",
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


class Subscriber:
    """One connection's bounded queue and the state its writer needs."""

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
        wakeup: asyncio.Event | Waker | None = None,
    ) -> None:
        self._items: list[Delivery] = []
        self._maxlen = maxlen
        # The subscribers of one connection (a WebSocket holding several
        # subscriptions) share one event, so that its one writer waits on all.
        self._wakeup = wakeup if wakeup is not None else Waker()
        self.transport = transport
        self.principal = principal
        self.appointment_id = appointment_id
        self.close_reason: CloseReason | None = None
        self.delivered = 0
        self.dropped = 0
        self.heartbeat_due = False
        # Monotonic time of the next keep-alive (`services/clock.py`), pushed
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
        if len(self._items) >= self._maxlen:
            self.dropped += 1
            metrics.SLOW_CONSUMERS.labels(transport=self.transport).inc()
            self.close(CloseReason.TOO_SLOW)
            return False
        self._items.append(item)
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

    async def wait(self) -> None:
        """Sleep until something is queued, a heartbeat is due, or it is closed."""
        await self._wakeup.wait()
        self._wakeup.clear()

    def drain(self) -> list[Delivery]:
        """Everything queued, oldest first, minus what a replay already sent."""
        items, self._items = self._items, []
        skip = self.skip_through
        if skip is not None:
            items = [i for i in items if i.id_key is None or i.id_key > skip]
            if any(i.id_key is not None for i in items):
                # A newer id went through: ids only grow from here on.
                self.skip_through = None
        self.delivered += sum(i.is_event for i in items)
        return items

    def __len__(self) -> int:
        return len(self._items)


class ChannelBroker(Protocol):
    """What the hub asks of the broker: the process' subscriptions (`Broker`)."""

    async def subscribe(self, channel: str) -> None: ...

    async def subscribe_many(self, channels: list[str]) -> None: ...

    async def unsubscribe(self, channel: str) -> None: ...


class BackfillSource(Protocol):
    """Where a channel's missed events are read from (`HistoryReader`)."""

    async def read_all_after(
        self, patient_id: str, after_id: str
    ) -> tuple[list[EventStored], bool, str | None]: ...


class _Channel:
    __slots__ = (
        "backfilling",
        "last_key",
        "patient_id",
        "pending",
        "since_ms",
        "subscribed",
        "subscribers",
    )

    def __init__(self, patient_id: str) -> None:
        self.patient_id = patient_id
        self.subscribers: set[Subscriber] = set()
        self.last_key: StreamKey | None = None
        # Fallback start of a backfill when nothing with an id was delivered yet.
        self.since_ms = int(time.time() * 1000)
        # Backfills queued or running for it (several may overlap: a listener
        # reconnect and a Cluster shard's); live messages wait while > 0.
        self.backfilling = 0
        self.pending: list[bytes] = []
        # Resolved once the broker confirmed the subscription (None: confirmed, or
        # nobody waits any more); every attach of the channel waits on it.
        self.subscribed: asyncio.Future[None] | None = None


# Channels whose live messages wait for a backfill (`Hub.begin_backfill`).
HeldChannels = list[_Channel]


class Hub:
    """Channel → subscribers, reference-counted against the broker's subscriptions.

    The first attach of a channel does not subscribe it alone: every channel that
    became new during one loop iteration is subscribed with one broker call (one
    `SUBSCRIBE` carrying them all, one confirmation wait), and each attach returns
    once its own channel is confirmed. The lock is held only while the broker call
    runs, so a detach's unsubscribe never overtakes the subscribe it undoes."""

    def __init__(
        self,
        *,
        keys: RedisKeys,
        broker: ChannelBroker,
        history: BackfillSource | None = None,
    ) -> None:
        self._keys = keys
        self._broker = broker
        self._channels: dict[str, _Channel] = {}
        self._lock = asyncio.Lock()
        self._all: set[Subscriber] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._to_subscribe: list[tuple[str, _Channel]] = []
        self._subscribing: set[asyncio.Task[None]] = set()
        self._subscriber: asyncio.Task[None] | None = None
        # Reads what a channel missed while the listener was away (None: no history).
        self.history = history

    # --- membership --------------------------------------------------------------

    async def attach(self, patient_id: str, subscriber: Subscriber) -> None:
        """Add `subscriber`; the first one of a patient subscribes the channel and
        returns only once the broker confirmed it (so a replay can follow safely);
        later ones joining before the confirmation wait for it too."""
        name = self._keys.patient_channel(patient_id)
        channel = self._channels.get(name)
        if channel is None:
            channel = self._channels[name] = _Channel(patient_id)
            channel.subscribed = asyncio.get_running_loop().create_future()
            if not self._to_subscribe and self._subscriber is None:
                asyncio.get_running_loop().call_soon(self._start_subscribing)
            self._to_subscribe.append((name, channel))
        channel.subscribers.add(subscriber)
        self._all.add(subscriber)
        self._idle.clear()
        waiting = channel.subscribed
        if waiting is None:
            return
        try:
            # Shielded: one caller going away must not cancel the others' wait.
            await asyncio.shield(waiting)
        except BaseException:
            channel.subscribers.discard(subscriber)
            self._forget(subscriber)
            if not channel.subscribers and channel.subscribed is None:
                # Settled already, so the batch will not look at it again.
                self._spawn(self._drop_if_empty(name, channel))
            raise

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        # Owned by the hub: short broker calls whose outcome the waiting attaches
        # receive through their futures; tracked so that none is collected early.
        task = asyncio.get_running_loop().create_task(coro)
        self._subscribing.add(task)
        task.add_done_callback(self._subscribing.discard)
        return task

    def _start_subscribing(self) -> None:
        if self._subscriber is None and self._to_subscribe:
            self._subscriber = self._spawn(self._subscribe_pending())

    async def _subscribe_pending(self) -> None:
        """One subscribing task at a time, and each batch is formed when the
        previous one is confirmed: everything that became new meanwhile goes in
        one call (a batch per loop iteration, each waiting for the lock, would
        serialise thousands of round trips in a storm)."""
        try:
            while self._to_subscribe:
                batch, self._to_subscribe = self._to_subscribe, []
                await self._subscribe_batch(batch)
        finally:
            self._subscriber = None

    async def _subscribe_batch(self, batch: list[tuple[str, _Channel]]) -> None:
        async with self._lock:
            # A channel whose subscribers all left before it was subscribed was
            # dropped (and "unsubscribed") by `detach` already: skip it.
            live = [(n, c) for n, c in batch if self._channels.get(n) is c]
            SUBSCRIBE_BATCH.observe(len(live))
            try:
                if len(live) == 1:
                    await self._broker.subscribe(live[0][0])
                elif live:
                    await self._broker.subscribe_many([name for name, _ in live])
            except BaseException as exc:
                for name, channel in batch:
                    # Not subscribed: every attach waiting on it fails and leaves.
                    if self._channels.get(name) is channel:
                        del self._channels[name]
                    self._settle(channel, exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                return
            for name, channel in live:
                self._settle(channel, None)
                if not channel.subscribers:
                    # Its only attaches were cancelled while it was being subscribed.
                    del self._channels[name]
                    await self._broker.unsubscribe(name)
        for _, channel in batch:
            self._settle(channel, None)

    async def _drop_if_empty(self, name: str, channel: _Channel) -> None:
        async with self._lock:
            if not channel.subscribers and self._channels.get(name) is channel:
                del self._channels[name]
                await self._broker.unsubscribe(name)

    @staticmethod
    def _settle(channel: _Channel, exc: BaseException | None) -> None:
        future, channel.subscribed = channel.subscribed, None
        if future is None or future.done():
            return
        if exc is None:
            future.set_result(None)
        elif isinstance(exc, asyncio.CancelledError):
            future.cancel()
        else:
            future.set_exception(exc)
            # Retrieved here: a channel whose attaches all left has no reader.
            future.exception()

    async def detach(self, patient_id: str, subscriber: Subscriber) -> None:
        """Remove `subscriber`; the last one of a patient unsubscribes the channel."""
        name = self._keys.patient_channel(patient_id)
        self._forget(subscriber)
        async with self._lock:
            channel = self._channels.get(name)
            if channel is None:
                return
            channel.subscribers.discard(subscriber)
            if not channel.subscribers:
                del self._channels[name]
                await self._broker.unsubscribe(name)

    def _forget(self, subscriber: Subscriber) -> None:
        self._all.discard(subscriber)
        if not self._all:
            self._idle.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no subscriber is left; False on timeout."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def track(self, subscriber: Subscriber) -> None:
        """Count a connection that holds no channel (a WebSocket before or between
        subscriptions), so that drains, revocations and `wait_streams_closed` see it."""
        self._all.add(subscriber)
        self._idle.clear()

    def untrack(self, subscriber: Subscriber) -> None:
        self._forget(subscriber)

    @property
    def subscribers(self) -> frozenset[Subscriber]:
        return frozenset(self._all)

    @property
    def channel_names(self) -> list[str]:
        return list(self._channels)

    def close_where(self, predicate: Callable[[Subscriber], bool], reason: CloseReason) -> int:
        """Close every local subscriber matching `predicate`; how many were closed."""
        closed = 0
        for subscriber in list(self._all):
            if subscriber.close_reason is None and predicate(subscriber):
                subscriber.close(reason)
                closed += 1
        return closed

    # --- what the listener hands over ---------------------------------------------

    def on_message(self, channel_name: str, raw: bytes) -> None:
        """Validate one raw pub/sub message and fan it out. Never raises for bad input."""
        channel = self._channels.get(channel_name)
        if channel is None:
            metrics.EVENTS_RECEIVED.labels(outcome="no_subscriber").inc()
            return
        if channel.backfilling:
            channel.pending.append(raw)
            return
        self._dispatch(channel, raw)

    def _dispatch(self, channel: _Channel, raw: bytes) -> None:
        event = self._parse(channel, raw)
        if event is not None:
            self._fan_out(channel, event)

    def _parse(self, channel: _Channel, raw: bytes) -> EventStored | None:
        if len(raw) > MAX_EVENT_BYTES:
            return self._drop("too_large")
        try:
            event = EventStored.model_validate_json(raw)
        except ValidationError as exc:
            # Field locations and error types only: never the payload or its values.
            fields = sorted({".".join(str(p) for p in err["loc"]) for err in exc.errors()})
            return self._drop("invalid", fields=fields[:10])
        if event.patient_id != channel.patient_id:
            # Published on another patient's channel: never deliver it there.
            return self._drop("wrong_channel")
        if event.rule_violation() is not None:
            return self._drop("rule")
        return event

    @staticmethod
    def _drop(reason: str, **fields: object) -> None:
        metrics.EVENTS_RECEIVED.labels(outcome="invalid").inc()
        log.warning("event_dropped", reason=reason, **fields)
        return

    def _fan_out(self, channel: _Channel, event: EventStored) -> None:
        if event.id is not None:
            key = parse_stream_id(event.id)
            if channel.last_key is not None and key <= channel.last_key:
                metrics.EVENTS_RECEIVED.labels(outcome="duplicate").inc()
                return
            channel.last_key = key
        delivery = Delivery.from_event(event)
        metrics.EVENTS_RECEIVED.labels(outcome="delivered").inc()
        if delivery.published_at is not None:
            metrics.DELIVERY_LATENCY.observe(max(0.0, time.time() - delivery.published_at))
        for subscriber in tuple(channel.subscribers):
            subscriber.put_nowait(delivery)

    def broadcast_gap(self, channel: _Channel, oldest_id: str | None) -> None:
        gap = Delivery.gap(oldest_id)
        for subscriber in tuple(channel.subscribers):
            subscriber.put_nowait(gap)

    # --- recovery after the broker reconnected ------------------------------------

    async def backfill(self, channel_names: Collection[str] | None = None) -> None:
        """Replay from history what each active channel (or each of `channel_names`:
        one Cluster shard's) missed while the listener was away; live messages
        arriving meanwhile wait and are deduplicated."""
        await self.finish_backfill(self.begin_backfill(channel_names))

    def begin_backfill(self, channel_names: Collection[str] | None = None) -> HeldChannels:
        """Hold back the live messages of each active channel (or of each of
        `channel_names`) from now on, until `finish_backfill` of what this returns.
        Synchronous, so that the listener calls it before it takes a newer message."""
        if self.history is None:
            return []
        if channel_names is None:
            channels = list(self._channels.values())
        else:
            channels = [c for n in channel_names if (c := self._channels.get(n)) is not None]
        for channel in channels:
            channel.backfilling += 1
        return channels

    async def finish_backfill(self, channels: HeldChannels) -> None:
        """Read each of `channels`' missed events from history and fan them out,
        then the live messages held back meanwhile (deduplicated by id)."""
        reader = self.history
        try:
            for channel in channels:
                if reader is None:
                    break
                after = (
                    f"{channel.last_key[0]}-{channel.last_key[1]}"
                    if channel.last_key is not None
                    else None
                )
                try:
                    events, gap, oldest = await reader.read_all_after(
                        channel.patient_id, after or f"{channel.since_ms}-0"
                    )
                except Exception:
                    log.exception("backfill_failed")
                    self.broadcast_gap(channel, None)
                    continue
                if gap and after is not None:
                    self.broadcast_gap(channel, oldest)
                for event in events:
                    self._fan_out(channel, event)
        finally:
            self.release_backfill(channels)

    def release_backfill(self, channels: HeldChannels) -> None:
        """Let `channels`' held-back live messages go (a backfill ended, or will not
        run); a channel another backfill still holds keeps waiting for that one."""
        for channel in channels:
            channel.backfilling -= 1
            if channel.backfilling:
                continue
            pending, channel.pending = channel.pending, []
            for raw in pending:
                if channel.subscribers:
                    self._dispatch(channel, raw)
