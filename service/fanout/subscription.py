"""A subscription: hub membership for one scope (a patient, or one appointment),
whatever the transport. An SSE stream is a connection with exactly one; a
WebSocket connection holds up to `ws_max_subscriptions`
(`service/fanout/connection.py`).

attach to hub (channel subscribed, confirmed), `stream_opened`
    ─▶ replay from history after the client's last id (gap first if needed)
    ─▶ live: its queue (`DeliveryQueue`) drained, one write per wake-up,
       skipping what the replay already sent (`skip_through`)
    ─▶ detach (the last one of a patient unsubscribes), `stream_closed`
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import structlog
from notify_publisher.events import EventStored

from service import metrics
from service.brokers.base import parse_stream_id
from service.fanout.closing import CloseReason
from service.fanout.hub import Hub
from service.fanout.queue import DeliveryQueue, Wakeup
from service.services.channels import StreamScope
from service.services.errors import UnavailableError
from service.services.history import HistoryReader, ReplayStart
from service.services.principal import Principal

log = structlog.get_logger("service.stream")


def reason_for(exc: BaseException | None, queue: DeliveryQueue) -> CloseReason:
    """Why a subscription's block ended: its exception, else what closed it."""
    if isinstance(exc, UnavailableError):
        return CloseReason.BROKER_UNAVAILABLE
    if isinstance(exc, Exception):
        return CloseReason.INTERNAL_ERROR
    # No exception, a cancellation or the response closing the body: whatever
    # closed the queue, else the client went away.
    return queue.close_reason or CloseReason.CLIENT_GONE


@dataclass(frozen=True, slots=True)
class Replay:
    start: ReplayStart
    pages: AsyncIterator[list[EventStored]]
    # Where the client stands once this replay is sent if it has received nothing
    # else: its own id when it resumed, else the history head read before the
    # subscription (SSE sends it as an id-only block, WebSocket in `subscribed`).
    resume_point: str
    fresh: bool


class Subscription:
    # Slots, not an instance dict: every idle stream keeps one (issue 23).
    __slots__ = (
        "_attached",
        "_history",
        "_hub",
        "_opened",
        "_started",
        "id",
        "live",
        "principal",
        "queue",
        "replay",
        "reply_to",
        "route",
        "scope",
        "transport",
    )

    def __init__(
        self,
        *,
        hub: Hub,
        history: HistoryReader,
        principal: Principal,
        scope: StreamScope,
        transport: str,
        queue_max: int,
        route: str,
        wakeup: Wakeup | None = None,
        sub_id: str = "",
        reply_to: str | None = None,
    ) -> None:
        self._hub = hub
        self._history = history
        self.principal = principal
        self.scope = scope
        self.transport = transport
        self.route = route
        self.queue = DeliveryQueue(
            maxlen=queue_max,
            transport=transport,
            principal=principal,
            appointment_id=scope.appointment_id,
            wakeup=wakeup,
        )
        # WebSocket only: the subscription's id on its connection ("" on SSE), the client's
        # `subscribe` frame id, the replay its writer still has to send, and
        # whether live events are drained yet (only once `subscribed` and the
        # replay were sent).
        self.id = sub_id
        self.reply_to = reply_to
        self.replay: Replay | None = None
        self.live = False
        self._attached = False
        # `stream_opened` was logged: `log_closed` logs the matching `stream_closed`.
        self._opened = False
        self._started = time.monotonic()

    def overlaps(self, scope: StreamScope) -> bool:
        mine = self.scope
        if mine.patient_id != scope.patient_id:
            return False
        return (
            mine.appointment_id is None
            or scope.appointment_id is None
            or mine.appointment_id == scope.appointment_id
        )

    async def start(
        self, *, resume_from: str | None, attached: Callable[[], object] | None = None
    ) -> Replay:
        """Subscribe (confirmed), then read what history holds after `resume_from`.

        A client with nothing to resume from gets the history head as its resume
        point, read *before* subscribing, and the replay after it covers whatever
        was published until the subscription took effect: so even a client that
        never receives an event loses nothing when it reconnects from that point.
        Live events arriving during the replay wait in the queue; `mark_replayed`
        makes the writer skip the ones the replay already covered. `attached`
        runs once the channel is confirmed, before `stream_opened` (the SSE
        connection schedules its token's expiry there; an argument, not kept, so
        that no reference cycle joins a connection and its subscription)."""
        fresh = resume_from is None
        after_id = resume_from or await self._history.head(self.scope.patient_id)
        await self._hub.attach(self.scope.patient_id, self.queue)
        self._attached = True
        if attached is not None:
            attached()
        self._opened = True
        log.info(
            "stream_opened",
            subject=self.principal.sub,
            role=self.principal.role.value,
            route=self.route,
            transport=self.transport,
            resumed=not fresh,
        )
        start, pages = await self._history.replay(
            self.scope.patient_id,
            after_id=after_id,
            appointment_id=self.scope.appointment_id,
        )
        return Replay(start=start, pages=pages, resume_point=after_id, fresh=fresh)

    async def replayed(self, replay: Replay) -> AsyncIterator[list[EventStored]]:
        """The replay's pages, counted as delivered; afterwards the live queue skips
        what they covered. The one replay loop of both transports."""
        last_id = None
        deliveries = metrics.DELIVERIES.labels(transport=self.transport)
        async for page in replay.pages:
            yield page
            self.queue.delivered += len(page)
            deliveries.inc(len(page))
            last_id = page[-1].id
        self.mark_replayed(last_id or replay.resume_point)

    def mark_replayed(self, last_id: str | None) -> None:
        if last_id is not None:
            self.queue.skip_through = parse_stream_id(last_id)

    def extend(self, principal: Principal) -> None:
        """A fresh token for the same subject (WebSocket `auth`)."""
        self.principal = principal
        self.queue.principal = principal

    async def detach(self) -> None:
        """Leave the hub (the last one of a patient unsubscribes the channel)."""
        if self._attached:
            self._attached = False
            await self._hub.detach(self.scope.patient_id, self.queue)

    async def end(self, *, reason: CloseReason) -> None:
        """Detach and log `stream_closed`, even when the detach failed or was
        cancelled: the log line must not depend on the broker."""
        try:
            await self.detach()
        finally:
            self.log_closed(reason)

    def log_closed(self, reason: CloseReason) -> None:
        if self._opened:
            self._opened = False
            log.info(
                "stream_closed",
                subject=self.principal.sub,
                role=self.principal.role.value,
                route=self.route,
                transport=self.transport,
                duration_s=round(time.monotonic() - self._started, 3),
                delivered=self.queue.delivered,
                dropped=self.queue.dropped,
                close_reason=reason.value,
            )
