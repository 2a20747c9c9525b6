"""One WebSocket connection, whatever transport writes its frames.

    handshake (ticket or bearer header) or a first `auth` frame
      ─▶ admit: the connection counts once against the limits, however many
         subscriptions it holds; it is tracked by the hub from now on, so drains
         and revocations reach it even with no subscription
      ─▶ subscriptions (at most `ws_max_subscriptions`, never overlapping): each
         is a `StreamSession` whose subscriber shares the connection's wake-up event
      ─▶ one writer (`write`): replies in order, a new subscription's `subscribed`
         and replay, then live events; nobody else writes, so `unsubscribed` is
         never followed by an event of that subscription
      ─▶ end: client gone │ too slow │ shutdown │ token expired │ revoked │
              policy (garbage) │ Redis unreachable during a replay
      ─▶ every session detached, the limit released, one summary log line

Design choice: several subscriptions per socket (a patient's stream, or a few of
their appointments; staff: several patients) rather than one socket each, because
a mobile app should not pay a TCP+TLS connection per appointment screen.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from typing import Final

import structlog
from notify_publisher.keys import RedisKeys

from service import metrics
from service.brokers.base import Broker
from service.config import Settings
from service.schemas.ws import (
    GapMessage,
    SubscribedMessage,
    TokenExpiringMessage,
)
from service.services.channels import StreamScope
from service.services.clock import Clock
from service.services.closing import ENDINGS, PRECEDENCE, CloseReason, Ending
from service.services.commands import CommandRateLimiter, OwnedAppointments
from service.services.errors import DomainError, UnavailableError
from service.services.history import HistoryReader
from service.services.hub import Delivery, Hub, Subscriber, Waker
from service.services.limits import ConnectionLimiter, Limit
from service.services.principal import Principal, Role
from service.services.streams import (
    Replay,
    StreamSession,
    admit,
    release,
)
from service.wire.ws import delivery_texts, event_text, message_text

log = structlog.get_logger("service.ws")

TRANSPORT: Final = "ws"
ROUTE: Final = "/v1/ws"

Send = Callable[[str], Awaitable[None]]


class SubjectMismatchError(DomainError):
    """A fresh `auth` frame named another subject than the connection's."""

    code = "subject_mismatch"
    public_message = "the token belongs to another subject"


class AlreadySubscribedError(DomainError):
    code = "already_subscribed"
    public_message = "already subscribed to these events"


class TooManySubscriptionsError(DomainError):
    code = "too_many_subscriptions"
    public_message = "too many subscriptions on this connection"


class NotSubscribedError(DomainError):
    code = "not_subscribed"
    public_message = "no such subscription"


OVER_CAPACITY: Final = ENDINGS[CloseReason.OVER_CAPACITY]
UNAUTHORIZED: Final = ENDINGS[CloseReason.UNAUTHORIZED]
UNAVAILABLE: Final = ENDINGS[CloseReason.BROKER_UNAVAILABLE]
TOO_MANY_INVALID: Final = ENDINGS[CloseReason.POLICY]
INTERNAL: Final = ENDINGS[CloseReason.INTERNAL_ERROR]


class Subscription:
    __slots__ = ("id", "live", "replay", "reply_to", "session", "since")

    def __init__(
        self, *, sub_id: str, session: StreamSession, since: str | None, reply_to: str | None
    ) -> None:
        self.id = sub_id
        self.session = session
        self.since = since
        self.reply_to = reply_to
        self.replay: Replay | None = None
        # Live events are drained only once `subscribed` and the replay were sent.
        self.live = False

    @property
    def scope(self) -> StreamScope:
        return self.session.scope

    def overlaps(self, scope: StreamScope) -> bool:
        mine = self.scope
        if mine.patient_id != scope.patient_id:
            return False
        return (
            mine.appointment_id is None
            or scope.appointment_id is None
            or mine.appointment_id == scope.appointment_id
        )


class WsConnection:
    def __init__(
        self,
        *,
        settings: Settings,
        hub: Hub,
        history: HistoryReader,
        limiter: ConnectionLimiter,
        broker: Broker,
        keys: RedisKeys,
        principal: Principal,
        clock: Clock,
    ) -> None:
        self._settings = settings
        self._hub = hub
        self._history = history
        self._limiter = limiter
        self.broker = broker
        self.keys = keys
        self.principal = principal
        self.wakeup = Waker()
        # The connection's own entry in the hub: no channel, never fed events;
        # drains, revocations and the token's expiry close it.
        self.control = Subscriber(
            maxlen=1, transport=TRANSPORT, principal=principal, wakeup=self.wakeup
        )
        self._outbox: deque[str | Subscription] = deque()
        self._outbox_max = settings.client_queue_max
        self._subscriptions: dict[str, Subscription] = {}
        self._next_id = 1
        # Warns and closes once for all the subscriptions when the token expires.
        self._clock = clock
        self._admitted = False
        self._started = time.monotonic()
        self.owned = OwnedAppointments(
            broker=broker, keys=keys, patient_id=principal.sub, page_size=settings.history_page
        )
        self.command_limiter = CommandRateLimiter()
        self.invalid_messages = 0
        self.delivered = 0
        self.commands = 0
        self.acks = 0
        self.subscriptions_opened = 0
        # A close the reader decided on (garbage): the writer sends the pending
        # replies (the errors that explain it) and then closes.
        self._requested: Ending | None = None

    # --- admission -----------------------------------------------------------------

    def admit(self) -> Limit | None:
        """Count the connection once against the limits; the limit hit when refused."""
        refused = admit(self._limiter, self.principal.sub, TRANSPORT)
        if refused is not None:
            return refused
        self._admitted = True
        self._hub.track(self.control)
        self._clock.expiry(self, self.principal.expires_at)
        return None

    def extend(self, principal: Principal) -> None:
        """A fresh token for the same subject: new identity details, new expiry."""
        if principal.sub != self.principal.sub:
            raise SubjectMismatchError()
        self.principal = principal
        self.control.principal = principal
        for subscription in self._subscriptions.values():
            subscription.session.extend(principal)
        if self._admitted:
            # Replaces the expiry registered at `admit` (never one after `end`).
            self._clock.expiry(self, principal.expires_at)

    # --- called by the clock (`services/clock.py:Expiring`) ---------------------------

    def warn_expiring(self, expires_at: int) -> None:
        self.reply(message_text(TokenExpiringMessage(expires_at=expires_at)))

    def expire(self) -> None:
        self.control.close(CloseReason.TOKEN_EXPIRED)

    # --- what the reader does --------------------------------------------------------

    def note_invalid(self) -> bool:
        """Count one invalid frame; True once there were more than the threshold."""
        self.invalid_messages += 1
        return self.invalid_messages > self._settings.ws_max_invalid_messages

    def reply(self, frame: str) -> None:
        """Queue a frame for the writer; a client that lets replies pile up is too slow."""
        if len(self._outbox) >= self._outbox_max:
            if self.control.close_reason is None:
                metrics.SLOW_CONSUMERS.labels(transport=TRANSPORT).inc()
            self.control.close(CloseReason.TOO_SLOW)
            return
        self._outbox.append(frame)
        self.wakeup.set()

    async def subscribe(
        self, scope: StreamScope, *, since: str | None, reply_to: str | None
    ) -> Subscription:
        """Attach a new subscription (confirmed by the broker) and read the start of
        its replay; the writer then sends `subscribed`, the replay, and live events."""
        if any(s.overlaps(scope) for s in self._subscriptions.values()):
            raise AlreadySubscribedError()
        if len(self._subscriptions) >= self._settings.ws_max_subscriptions:
            raise TooManySubscriptionsError()
        sub_id = f"s{self._next_id}"
        self._next_id += 1
        session = StreamSession(
            hub=self._hub,
            history=self._history,
            limiter=self._limiter,
            principal=self.principal,
            scope=scope,
            transport=TRANSPORT,
            queue_max=self._settings.client_queue_max,
            route=ROUTE,
            clock=None,
            wakeup=self.wakeup,
        )
        subscription = Subscription(sub_id=sub_id, session=session, since=since, reply_to=reply_to)
        # Registered before the first await, so that `end` cleans up after a
        # cancellation in the middle of `start`.
        self._subscriptions[sub_id] = subscription
        try:
            subscription.replay = await session.start(resume_from=since)
        except BaseException as exc:
            self._subscriptions.pop(sub_id, None)
            failed = (
                CloseReason.BROKER_UNAVAILABLE
                if isinstance(exc, UnavailableError)
                else CloseReason.CLIENT_GONE
                if isinstance(exc, asyncio.CancelledError)
                else CloseReason.INTERNAL_ERROR
            )
            await session.end(reason=failed)
            raise
        self.subscriptions_opened += 1
        self._outbox.append(subscription)
        self.wakeup.set()
        return subscription

    async def unsubscribe(self, sub_id: str | None) -> list[str]:
        """End one subscription (or all); the ids ended."""
        if sub_id is None:
            ids = list(self._subscriptions)
        elif sub_id in self._subscriptions:
            ids = [sub_id]
        else:
            raise NotSubscribedError()
        for one in ids:
            subscription = self._subscriptions.pop(one)
            subscription.live = False
            await subscription.session.end(reason=CloseReason.UNSUBSCRIBED)
        return ids

    # --- the writer ------------------------------------------------------------------

    def request_close(self, closing: Ending) -> None:
        """End the connection once the replies queued so far are sent."""
        if self._requested is None:
            self._requested = closing
        self.wakeup.set()

    def closing(self) -> Ending | None:
        """Why the connection must end now, if it must."""
        if self._requested is not None:
            return self._requested
        reasons = {
            subscription.session.subscriber.close_reason
            for subscription in self._subscriptions.values()
        }
        reasons.add(self.control.close_reason)
        for reason in PRECEDENCE:
            if reason in reasons:
                return ENDINGS[reason]
        other = next((r for r in reasons if r is not None), None)
        return ENDINGS[other] if other is not None else None

    async def write(self, send: Send) -> Ending:
        """Send everything queued, in order, until the connection must end."""
        try:
            while True:
                await self.wakeup.wait()
                self.wakeup.clear()
                closing = self.closing()
                if closing is not None:
                    if closing.reason is CloseReason.SHUTDOWN:
                        # Shutdown: what is already here is legitimate, send it.
                        await self._flush(send)
                    elif closing is self._requested:
                        await self._flush_replies(send)
                    return closing
                await self._flush(send)
        except UnavailableError:
            # History could not be read during a replay: retry from `since` later.
            return UNAVAILABLE

    async def _flush_replies(self, send: Send) -> None:
        while self._outbox:
            item = self._outbox.popleft()
            if isinstance(item, str):
                await send(item)

    async def _flush(self, send: Send) -> None:
        while self._outbox:
            item = self._outbox.popleft()
            if isinstance(item, str):
                await send(item)
            else:
                await self._start(item, send)
        for subscription in tuple(self._subscriptions.values()):
            if not subscription.live:
                continue
            items = subscription.session.subscriber.drain()
            if not items:
                continue
            if self._must_stop():
                return
            if self._remembers(subscription):
                for delivery in items:
                    if delivery.appointment_id is not None:
                        self.owned.remember(delivery.appointment_id)
            for frame in delivery_texts(items):
                await send(frame)
            self._count(items)

    def _must_stop(self) -> bool:
        """Revoked or expired credentials: not one more event."""
        closing = self.closing()
        return closing is not None and closing.reason in (
            CloseReason.REVOKED,
            CloseReason.TICKET_DELETED,
            CloseReason.TOKEN_EXPIRED,
        )

    def _remembers(self, subscription: Subscription) -> bool:
        """Events of the caller's own channel prove which appointments are theirs."""
        return (
            self.principal.role is Role.PATIENT
            and subscription.scope.patient_id == self.principal.sub
        )

    def _count(self, items: list[Delivery]) -> None:
        events = sum(1 for item in items if item.is_event)
        self.delivered += events
        metrics.DELIVERIES.labels(transport=TRANSPORT).inc(events)

    async def _start(self, subscription: Subscription, send: Send) -> None:
        scope = subscription.scope
        replay = subscription.replay
        # Set by `subscribe` before the subscription is queued for this writer.
        assert replay is not None
        await send(
            message_text(
                SubscribedMessage(
                    subscription_id=subscription.id,
                    patient_id=scope.patient_id,
                    appointment_id=scope.appointment_id,
                    resumed=not replay.fresh,
                    resume_point=replay.resume_point,
                    reply_to=subscription.reply_to,
                )
            )
        )
        if self._subscriptions.get(subscription.id) is not subscription:
            return  # unsubscribed meanwhile: `unsubscribed` follows
        if replay.start.gap:
            await send(
                message_text(
                    GapMessage(oldest_id=replay.start.oldest_id, subscription_id=subscription.id)
                )
            )
        remember = self._remembers(subscription)
        async for page in subscription.session.replayed(replay):
            for event in page:
                await send(event_text(event.model_dump_json(exclude_none=True)))
                if remember:
                    self.owned.remember(event.appointment_id)
            self.delivered += len(page)
        subscription.replay = None
        subscription.live = True
        # Live events may have queued during the replay.
        self.wakeup.set()

    # --- the end ---------------------------------------------------------------------

    def iter_subscriptions(self) -> Iterator[Subscription]:
        return iter(tuple(self._subscriptions.values()))

    async def end(self, *, reason: CloseReason) -> None:
        self._clock.discard(self)
        subscriptions = list(self._subscriptions.values())
        self._subscriptions.clear()
        dropped = 0
        for subscription in subscriptions:
            dropped += subscription.session.subscriber.dropped
            await subscription.session.end(reason=reason)
        if not self._admitted:
            return
        self._admitted = False
        self._hub.untrack(self.control)
        duration = release(self._limiter, self.principal.sub, TRANSPORT, self._started)
        log.info(
            "ws_closed",
            subject=self.principal.sub,
            role=self.principal.role.value,
            route=ROUTE,
            transport=TRANSPORT,
            duration_s=round(duration, 3),
            subscriptions=self.subscriptions_opened,
            delivered=self.delivered,
            dropped=dropped,
            commands=self.commands,
            acks=self.acks,
            invalid_messages=self.invalid_messages,
            close_reason=reason.value,
        )
