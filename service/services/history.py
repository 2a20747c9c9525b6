"""Replay from a patient's history stream, and the proof that nothing is missing.

Each history entry records the id of the entry before it (`prev`). A replay after
id X is complete exactly when the first entry after X says its predecessor was X;
anything else (trimmed past X, history expired or lost in a Redis restart) is a
gap, and the client is told to refetch instead of silently missing events.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import structlog
from notify_publisher.events import MAX_EVENT_BYTES, EventStored, is_stream_id
from notify_publisher.keys import RedisKeys
from pydantic import ValidationError

from service import metrics
from service.brokers.base import Broker, HistoryPage, HistoryRead, parse_stream_id, splice_id
from service.services.batching import TickReads

log = structlog.get_logger(__name__)

# The resume point of a client that connected while the history was empty: it
# stands before every entry, so a replay after it is complete exactly when the
# first entry it returns is the first ever written (its `prev` is "").
EMPTY_HISTORY_ID = "0-0"


@dataclass(frozen=True, slots=True)
class ReplayStart:
    gap: bool
    oldest_id: str | None


class HistoryReader:
    def __init__(
        self, *, broker: Broker, keys: RedisKeys, page_size: int, reads: TickReads | None = None
    ) -> None:
        self._broker = broker
        self._keys = keys
        self._page_size = page_size
        # The heads and pages read by every connection of one loop iteration go to
        # Redis in one call, with the ticket and revocation checks of the same
        # iteration (a reconnect storm reads thousands at once): the process'
        # `TickReads`, shared with `AppState.reads`.
        self.reads = (
            reads
            if reads is not None
            else TickReads(broker.read_batch, one_round_trip=broker.reads_in_one_round_trip)
        )

    async def _read(self, key: str, *, after_id: str) -> HistoryPage:
        return await self.reads.page(
            HistoryRead(history_key=key, after_id=after_id, count=self._page_size)
        )

    async def replay(
        self, patient_id: str, *, after_id: str, appointment_id: str | None = None
    ) -> tuple[ReplayStart, AsyncIterator[list[EventStored]]]:
        """Whether there is a gap after `after_id`, and the events after it, in pages."""
        key = self._keys.history(patient_id)
        page = await self._read(key, after_id=after_id)
        from_empty = after_id == EMPTY_HISTORY_ID
        if not page.exists:
            # Expired or lost (a Redis restart) since the client's id; still empty
            # for a client that came while it was empty.
            start = ReplayStart(gap=not from_empty, oldest_id=None)
        elif page.entries:
            expected_prev = "" if from_empty else after_id
            start = ReplayStart(gap=page.entries[0].prev != expected_prev, oldest_id=page.first_id)
        else:
            # Nothing after the client's id. Complete only if that id is the newest
            # entry: an id newer than the history's head was lost (a failover that
            # dropped writes not yet replicated), and what followed it may be too.
            lost = (
                not from_empty
                and page.last_id is not None
                and parse_stream_id(page.last_id) < parse_stream_id(after_id)
            )
            start = ReplayStart(gap=lost, oldest_id=page.first_id)

        async def pages() -> AsyncIterator[list[EventStored]]:
            current = page
            while current.entries:
                events = [
                    event
                    for entry in current.entries
                    if (event := _decode(entry.id, entry.payload)) is not None
                    and (appointment_id is None or event.appointment_id == appointment_id)
                ]
                if events:
                    yield events
                if len(current.entries) < self._page_size:
                    return
                current = await self._read(key, after_id=current.entries[-1].id)

        return start, pages()

    async def head(self, patient_id: str) -> str:
        """Where a client that has received nothing resumes from: the id of the
        newest history entry, or `EMPTY_HISTORY_ID`."""
        newest = await self.reads.head(self._keys.history(patient_id))
        return newest or EMPTY_HISTORY_ID

    async def read_all_after(
        self, patient_id: str, after_id: str
    ) -> tuple[list[EventStored], bool, str | None]:
        """Everything after `after_id` at once (listener backfill)."""
        start, pages = await self.replay(patient_id, after_id=after_id)
        events = [event async for batch in pages for event in batch]
        return events, start.gap, start.oldest_id


def _decode(entry_id: str, payload: str) -> EventStored | None:
    """An entry as a client may be sent it, or None (dropped, counted, logged
    without its payload): the same rules as for a live message (`Hub._parse`)."""
    raw = splice_id(payload, entry_id)
    if len(raw.encode()) > MAX_EVENT_BYTES:
        metrics.HISTORY_ENTRIES_DROPPED.labels(reason="too_large").inc()
        log.warning("history_entry_dropped", reason="too_large")
        return None
    try:
        event = EventStored.model_validate_json(raw)
    except ValidationError:
        metrics.HISTORY_ENTRIES_DROPPED.labels(reason="invalid").inc()
        log.warning("history_entry_dropped", reason="invalid")
        return None
    if event.rule_violation() is not None:
        metrics.HISTORY_ENTRIES_DROPPED.labels(reason="rule").inc()
        log.warning("history_entry_dropped", reason="rule")
        return None
    return event


def valid_resume_id(value: str | None) -> str | None:
    """A client's `Last-Event-ID`, or None when absent or not a stream id."""
    if value is None:
        return None
    value = value.strip()
    return value if is_stream_id(value) else None
