"""The life of one client stream, whatever its transport (SSE or WebSocket).

admit (limits) ─▶ attach to hub (channel subscribed, confirmed)
    ─▶ replay from history after the client's last id (gap first if needed)
    ─▶ live: drain the bounded queue, one write per wake-up, skip what the
       replay already sent
    ─▶ end: client gone │ too slow │ shutdown │ token expired │ revoked │
            ticket deleted
    ─▶ detach (last one unsubscribes), release the limit, one summary log line
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import structlog
from notify_publisher.events import EventStored

from service import metrics
from service.brokers.base import parse_stream_id
from service.services.channels import StreamScope
from service.services.clock import Clock
from service.services.errors import UnavailableError
from service.services.history import HistoryReader, ReplayStart
from service.services.hub import CloseReason, Delivery, Hub, Subscriber, Waker
from service.services.limits import ConnectionLimiter, Limit
from service.services.principal import Principal

log = structlog.get_logger("service.stream")


def jittered_retry_ms(base_ms: int) -> int:
    """A per-connection `retry:` so that clients don't come back in lockstep."""
    return int(base_ms * random.uniform(0.5, 1.5))  # noqa: S311


# --- the connection's half, shared by SSE streams and WebSocket connections -------


def admit(limiter: ConnectionLimiter, subject: str, transport: str) -> Limit | None:
    """Count one connection against the limits; the limit hit when refused."""
    refused = limiter.try_acquire(subject)
    if refused is not None:
        metrics.CAPACITY_REFUSALS.labels(transport=transport, limit=refused.value).inc()
        return refused
    metrics.OPEN_STREAMS.labels(transport=transport).inc()
    return None


def release(limiter: ConnectionLimiter, subject: str, transport: str, started: float) -> float:
    """Undo `admit`; the connection's duration in seconds."""
    limiter.release(subject)
    metrics.OPEN_STREAMS.labels(transport=transport).dec()
    duration = time.monotonic() - started
    metrics.STREAM_DURATION.labels(transport=transport).observe(duration)
    return duration


def _reason_for(exc: BaseException | None, subscriber: Subscriber) -> CloseReason:
    """Why a subscription's block ended: its exception, else what closed it."""
    if isinstance(exc, UnavailableError):
        return CloseReason.BROKER_UNAVAILABLE
    if isinstance(exc, Exception):
        return CloseReason.INTERNAL_ERROR
    # No exception, a cancellation or the response closing the body: whatever
    # closed the subscriber, else the client went away.
    return subscriber.close_reason or CloseReason.CLIENT_GONE


@dataclass(frozen=True, slots=True)
class Replay:
    start: ReplayStart
    pages: AsyncIterator[list[EventStored]]
    # Where the client stands once this replay is sent if it has received nothing
    # else: its own id when it resumed, else the history head read before the
    # subscription (SSE sends it as an id-only block, WebSocket in `subscribed`).
    resume_point: str
    fresh: bool


class StreamSession:
    def __init__(
        self,
        *,
        hub: Hub,
        history: HistoryReader,
        limiter: ConnectionLimiter,
        principal: Principal,
        scope: StreamScope,
        transport: str,
        queue_max: int,
        route: str,
        clock: Clock | None,
        wakeup: asyncio.Event | Waker | None = None,
    ) -> None:
        self._hub = hub
        self._history = history
        self._limiter = limiter
        self.principal = principal
        self.scope = scope
        self.transport = transport
        self.route = route
        self.subscriber = Subscriber(
            maxlen=queue_max,
            transport=transport,
            principal=principal,
            appointment_id=scope.appointment_id,
            wakeup=wakeup,
        )
        # The process' clock, which ends the stream when its token expires; None
        # when the connection carrying it does (a WebSocket with several
        # subscriptions warns and closes once).
        self._clock = clock
        self._admitted = False
        self._attached = False
        # `stream_opened` was logged: `end` logs the matching `stream_closed`.
        self._opened = False
        self._resume_from: str | None = None
        self._started = time.monotonic()

    def admit(self) -> Limit | None:
        """Count this stream against the limits; the limit hit when refused."""
        refused = admit(self._limiter, self.principal.sub, self.transport)
        self._admitted = refused is None
        return refused

    async def start(self, *, resume_from: str | None) -> Replay:
        """Subscribe (confirmed), then read what history holds after `resume_from`.

        A client with nothing to resume from gets the history head as its resume
        point, read *before* subscribing, and the replay after it covers whatever
        was published until the subscription took effect: so even a client that
        never receives an event loses nothing when it reconnects from that point.
        Live events arriving during the replay wait in the queue; `mark_replayed`
        makes the writer skip the ones the replay already covered."""
        fresh = resume_from is None
        after_id = resume_from or await self._history.head(self.scope.patient_id)
        await self._hub.attach(self.scope.patient_id, self.subscriber)
        self._attached = True
        if self._clock is not None:
            self._clock.expiry(self, self.principal.expires_at)
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
            self.subscriber.delivered += len(page)
            deliveries.inc(len(page))
            last_id = page[-1].id
        self.mark_replayed(last_id or replay.resume_point)

    def mark_replayed(self, last_id: str | None) -> None:
        if last_id is not None:
            self.subscriber.skip_through = parse_stream_id(last_id)

    # --- called by the clock (`services/clock.py:Expiring`) ---------------------------

    def warn_expiring(self, expires_at: int) -> None:
        notice = Delivery(kind="token_expiring", payload=json.dumps({"expires_at": expires_at}))
        self.subscriber.put_nowait(notice)

    def expire(self) -> None:
        self.subscriber.close(CloseReason.TOKEN_EXPIRED)

    def extend(self, principal: Principal) -> None:
        """A fresh token for the same subject (WebSocket `auth`): new expiry."""
        self.principal = principal
        self.subscriber.principal = principal
        if self._clock is not None and self._opened:
            # Replaces the expiry registered at `start` (never one after `end`).
            self._clock.expiry(self, principal.expires_at)

    def subscribed(self, *, resume_from: str | None) -> StreamSession:
        """Hub membership for an `async with` block: attached (and `stream_opened`)
        on entry, which gives the replay to send; detached, released and
        `stream_closed` on exit, whatever ended it. The reason comes from the
        subscriber or the exception. (The session is its own context manager: no
        generator kept alive per stream.)"""
        self._resume_from = resume_from
        return self

    async def __aenter__(self) -> Replay:
        try:
            return await self.start(resume_from=self._resume_from)
        except BaseException as exc:
            await self.end(reason=_reason_for(exc, self.subscriber))
            raise

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, _tb: object
    ) -> None:
        await self.end(reason=_reason_for(exc, self.subscriber))

    async def end(self, *, reason: CloseReason) -> None:
        if self._clock is not None:
            self._clock.discard(self)
        try:
            if self._attached:
                self._attached = False
                await self._hub.detach(self.scope.patient_id, self.subscriber)
        finally:
            # Even when the detach failed or was cancelled: the limit and the
            # `stream_closed` line must not depend on the broker.
            self._release(reason)

    def _release(self, reason: CloseReason) -> None:
        duration = time.monotonic() - self._started
        if self._admitted:
            # Only a stream admitted on its own (SSE) holds a limit; a WebSocket
            # subscription counts with its connection.
            self._admitted = False
            release(self._limiter, self.principal.sub, self.transport, self._started)
        if self._opened:
            self._opened = False
            log.info(
                "stream_closed",
                subject=self.principal.sub,
                role=self.principal.role.value,
                route=self.route,
                transport=self.transport,
                duration_s=round(duration, 3),
                delivered=self.subscriber.delivered,
                dropped=self.subscriber.dropped,
                close_reason=reason.value,
            )
