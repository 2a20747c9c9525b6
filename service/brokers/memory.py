"""In-process broker for one-process development (`make run`) and hub unit tests.

It mirrors the Redis broker's semantics (history ids, `prev` links, trimming,
TTLs) so that resume works the same way; it cannot be shared between processes,
which is why settings refuse it with more than one worker and in production.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from notify_publisher.batch import Durability, Outcome
from notify_publisher.errors import IdempotencyKeyReusedError, NotDurableError
from notify_publisher.request import PublishRequest, PublishResult

from service.brokers.base import (
    Broker,
    HistoryEntry,
    HistoryPage,
    parse_stream_id,
    splice_id,
)


@dataclass
class _Stream:
    entries: deque[HistoryEntry] = field(default_factory=deque)
    last_key: tuple[int, int] = (0, 0)
    expires_at: float | None = None


class MemoryBroker(Broker):
    def __init__(self, *, control_channel: str) -> None:
        super().__init__()
        self._control = control_channel
        self._channels: set[str] = set()
        self._streams: dict[str, _Stream] = {}
        self._values: dict[str, tuple[str, float]] = {}
        # Idempotency records: key -> (id, fingerprint, published_at, expiry).
        self._records: dict[str, tuple[str, str, str, float]] = {}
        # Field maps appended with `append_stream`, readable by in-process consumers.
        self.stream_records: dict[str, deque[tuple[str, dict[str, str]]]] = {}
        self._running = False

    async def start(self) -> None:
        self._channels.add(self._control)
        self._running = True

    async def stop(self) -> None:
        self._running = False
        self._channels.clear()

    @property
    def listener_up(self) -> bool:
        return self._running

    async def ping(self) -> None:
        return None

    async def subscribe(self, channel: str) -> None:
        self._channels.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)

    def _deliver(self, channel: str, payload: str) -> int:
        if channel not in self._channels:
            return 0
        # Read by the hub's listener on a later loop iteration, like a message
        # read from a socket.
        self.inbox.put_message(channel, payload.encode())
        return 1

    def _live_stream(self, key: str) -> _Stream | None:
        stream = self._streams.get(key)
        if stream is not None and stream.expires_at is not None and stream.expires_at < time.time():
            del self._streams[key]
            return None
        return stream

    def _next_id(self, stream: _Stream) -> str:
        ms = int(time.time() * 1000)
        last_ms, last_seq = stream.last_key
        key = (ms, 0) if ms > last_ms else (last_ms, last_seq + 1)
        stream.last_key = key
        return f"{key[0]}-{key[1]}"

    def _append(self, key: str, payload: str, *, maxlen: int, ttl_s: int | None) -> str:
        stream = self._live_stream(key)
        if stream is None:
            stream = self._streams[key] = _Stream()
        prev = stream.entries[-1].id if stream.entries else ""
        entry_id = self._next_id(stream)
        stream.entries.append(HistoryEntry(id=entry_id, prev=prev, payload=payload))
        while len(stream.entries) > maxlen:
            stream.entries.popleft()
        if ttl_s is not None:
            stream.expires_at = time.time() + ttl_s
        return entry_id

    async def publish_events(
        self, requests: Sequence[PublishRequest], durability: Durability | None
    ) -> list[Outcome]:
        """`publish.lua`'s semantics in memory (its KEYS and ARGV read the same
        way); no replica ever confirms, so a durable publish is `NotDurableError`."""
        outcomes: list[Outcome] = []
        for request in requests:
            history_key, record = request.keys[0], request.record_key
            event_json, maxlen, ttl_s, channel = request.args[:4]
            seen = self._records.get(record) if record is not None else None
            if seen is not None and seen[3] < time.time():
                seen = None
            if seen is not None:
                if seen[1] != request.args[5]:
                    outcomes.append(
                        IdempotencyKeyReusedError("this idempotency key was used for another event")
                    )
                    continue
                result = PublishResult(id=seen[0], replayed=True, published_at=seen[2])
            else:
                entry_id = self._append(
                    history_key, str(event_json), maxlen=int(maxlen), ttl_s=int(ttl_s)
                )
                self._deliver(str(channel), splice_id(str(event_json), entry_id))
                published_at = str(request.args[7]) if record is not None else ""
                if record is not None:
                    expires = time.time() + int(request.args[6])
                    self._records[record] = (entry_id, str(request.args[5]), published_at, expires)
                result = PublishResult(id=entry_id, replayed=False, published_at=published_at)
            if durability is not None:
                outcomes.append(
                    NotDurableError(event_id=result.id, wanted=durability.replicas, confirmed=0)
                )
            else:
                outcomes.append(result)
        return outcomes

    async def publish_raw(self, channel: str, payload: str) -> int:
        return self._deliver(channel, payload)

    async def read_history(self, history_key: str, *, after_id: str, count: int) -> HistoryPage:
        stream = self._live_stream(history_key)
        if stream is None:
            return HistoryPage(entries=[], exists=False, first_id=None)
        after = parse_stream_id(after_id)
        entries = [e for e in stream.entries if parse_stream_id(e.id) > after][:count]
        first = stream.entries[0].id if stream.entries else None
        last = stream.entries[-1].id if stream.entries else None
        return HistoryPage(entries=entries, exists=True, first_id=first, last_id=last)

    async def read_head(self, history_key: str) -> str | None:
        stream = self._live_stream(history_key)
        return stream.entries[-1].id if stream is not None and stream.entries else None

    async def set_value(self, key: str, value: str, *, ttl_s: int) -> None:
        self._values[key] = (value, time.time() + ttl_s)

    async def get_values(self, *keys: str) -> list[str | None]:
        now = time.time()
        out: list[str | None] = []
        for key in keys:
            item = self._values.get(key)
            if item is not None and item[1] < now:
                del self._values[key]
                item = None
            out.append(item[0] if item else None)
        return out

    async def delete_value(self, key: str) -> bool:
        return self._values.pop(key, None) is not None

    async def append_stream(self, key: str, fields: dict[str, str], *, maxlen: int) -> str:
        entry_id = self._append(key, "", maxlen=maxlen, ttl_s=None)
        records = self.stream_records.setdefault(key, deque(maxlen=maxlen))
        records.append((entry_id, dict(fields)))
        return entry_id
