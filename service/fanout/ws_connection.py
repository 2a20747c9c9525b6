"""A WebSocket connection (`WsConnection`): a `Connection` holding up to
`ws_max_subscriptions` subscriptions, one writer for all of them, and a queue of
its own in the hub. The writer is the stream that owns the socket
(`service/transports/ws_stream.py:WsStream`: `ready`, `start_subscription`), or,
under other servers, a writer task (`write`, `service/transports/ws.py`).

    handshake (ticket or bearer header) or a first `auth` frame
      ─▶ admit: the connection counts once against the limits, however many
         subscriptions it holds; its own queue (no channel) is tracked by the hub
         from now on, so drains and revocations reach it even with no subscription
      ─▶ subscriptions (never overlapping), whose queues share the connection's
         waker
      ─▶ one writer (`ready` + `start_subscription`, or `write`): replies in
         order, a new subscription's `subscribed` and replay, then live events;
         nobody else writes, so `unsubscribed` is never followed by an event of
         that subscription
      ─▶ end: client gone │ too slow │ shutdown │ token expired │ revoked │
              policy (garbage) │ Redis unreachable during a replay
      ─▶ every subscription ended, the limit released, one `ws_closed` line

Design choice: several subscriptions per socket (a patient's stream, or a few of
their appointments; staff: several patients) rather than one socket each, because
a mobile app should not pay a TCP+TLS connection per appointment screen.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from typing import Final

import structlog
from notify_publisher.keys import RedisKeys

from service import metrics
from service.brokers.base import Broker
from service.config import Settings
from service.fanout.clock import Clock
from service.fanout.closing import ENDINGS, CloseReason, Ending
from service.fanout.connection import Connection
from service.fanout.hub import Hub
from service.fanout.queue import Delivery, DeliveryQueue, Waker, Wakeup
from service.fanout.subscription import Subscription
from service.schemas.ws import (
    GapMessage,
    SubscribedMessage,
    TokenExpiringMessage,
)
from service.services.channels import StreamScope
from service.services.commands import CommandRateLimiter, OwnedAppointments
from service.services.errors import DomainError, UnavailableError
from service.services.history import HistoryReader
from service.services.limits import ConnectionLimiter, Limit
from service.services.principal import Principal, Role
from service.wire.ws import delivery_texts, event_text, message_text

log = structlog.get_logger("service.ws")

TRANSPORT: Final = "ws"
WS_DELIVERIES: Final = metrics.DELIVERIES.labels(transport=TRANSPORT)
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


class WsConnection(Connection):
    """A WebSocket: a connection with up to `ws_max_subscriptions` subscriptions,
    one writer for all of them, and a queue of its own in the hub."""

    # Slots, not an instance dict: every idle socket keeps one (issue 23).
    __slots__ = (
        "_command_limiter",
        "_history",
        "_hub",
        "_next_id",
        "_outbox",
        "_outbox_max",
        "_owned",
        "_requested",
        "_settings",
        "_subscriptions",
        "acks",
        "broker",
        "commands",
        "delivered",
        "invalid_messages",
        "keys",
        "subscriptions_opened",
        "wakeup",
    )

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
        super().__init__(
            limiter=limiter, principal=principal, transport=TRANSPORT, route=ROUTE, clock=clock
        )
        self._settings = settings
        self._hub = hub
        self._history = history
        self.broker = broker
        self.keys = keys
        # The wake-up of all its queues: a `Waker` its writer task sleeps on, or
        # the stream that owns the socket (`hand_to`).
        self.wakeup: Wakeup = Waker()
        # The connection's own queue in the hub: no channel, never fed events;
        # drains, revocations and the token's expiry close it.
        self.queue = DeliveryQueue(
            maxlen=1, transport=TRANSPORT, principal=principal, wakeup=self.wakeup
        )
        # Replies and new subscriptions waiting for the writer; made when needed
        # (an idle connection holds none: a deque is ~600 bytes).
        self._outbox: deque[str | Subscription] | None = None
        self._outbox_max = settings.client_queue_max
        self._subscriptions: dict[str, Subscription] = {}
        self._next_id = 1
        # Made on first use: most connections never send a command.
        self._owned: OwnedAppointments | None = None
        self._command_limiter: CommandRateLimiter | None = None
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
        refused = super().admit()
        if refused is not None:
            return refused
        self._hub.track(self.queue)
        self.schedule_expiry()
        return None

    @property
    def owned(self) -> OwnedAppointments:
        """The appointments the caller's own events proved theirs (commands check it)."""
        if self._owned is None:
            self._owned = OwnedAppointments(
                broker=self.broker,
                keys=self.keys,
                patient_id=self.principal.sub,
                page_size=self._settings.history_page,
            )
        return self._owned

    @property
    def command_limiter(self) -> CommandRateLimiter:
        if self._command_limiter is None:
            self._command_limiter = CommandRateLimiter()
        return self._command_limiter

    def extend(self, principal: Principal) -> None:
        """A fresh token for the same subject: new identity details, new expiry."""
        if principal.sub != self.principal.sub:
            raise SubjectMismatchError()
        self.principal = principal
        self.queue.principal = principal
        for subscription in self._subscriptions.values():
            subscription.extend(principal)
        if self._admitted:
            # Replaces the expiry registered at `admit` (never one after `end`).
            self.schedule_expiry()

    def warn_expiring(self, expires_at: int) -> None:
        self.reply(message_text(TokenExpiringMessage(expires_at=expires_at)))

    # --- what the reader does --------------------------------------------------------

    def note_invalid(self) -> bool:
        """Count one invalid frame; True once there were more than the threshold."""
        self.invalid_messages += 1
        return self.invalid_messages > self._settings.ws_max_invalid_messages

    def reply(self, frame: str) -> None:
        """Queue a frame for the writer; a client that lets replies pile up is too slow."""
        if self._outbox is None:
            self._outbox = deque()
        if len(self._outbox) >= self._outbox_max:
            if self.queue.close_reason is None:
                metrics.SLOW_CONSUMERS.labels(transport=TRANSPORT).inc()
            self.queue.close(CloseReason.TOO_SLOW)
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
        subscription = Subscription(
            hub=self._hub,
            history=self._history,
            principal=self.principal,
            scope=scope,
            transport=TRANSPORT,
            queue_max=self._settings.client_queue_max,
            route=ROUTE,
            wakeup=self.wakeup,
            sub_id=sub_id,
            reply_to=reply_to,
        )
        # Registered before the first await, so that `end` cleans up after a
        # cancellation in the middle of `start`.
        self._subscriptions[sub_id] = subscription
        try:
            subscription.replay = await subscription.start(resume_from=since)
        except BaseException as exc:
            self._subscriptions.pop(sub_id, None)
            failed = (
                CloseReason.BROKER_UNAVAILABLE
                if isinstance(exc, UnavailableError)
                else CloseReason.CLIENT_GONE
                if isinstance(exc, asyncio.CancelledError)
                else CloseReason.INTERNAL_ERROR
            )
            await subscription.end(reason=failed)
            raise
        self.subscriptions_opened += 1
        if self._outbox is None:
            self._outbox = deque()
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
            await subscription.end(reason=CloseReason.UNSUBSCRIBED)
        return ids

    # --- the writer ------------------------------------------------------------------

    def request_close(self, closing: Ending) -> None:
        """End the connection once the replies queued so far are sent."""
        if self._requested is None:
            self._requested = closing
        self.wakeup.set()

    def close_reasons(self) -> set[CloseReason | None]:
        reasons = {subscription.queue.close_reason for subscription in self._subscriptions.values()}
        reasons.add(self.queue.close_reason)
        return reasons

    def closing(self) -> Ending | None:
        """Why the connection must end now, if it must: a close the reader asked
        for first, then the reasons of its queues (`Connection.closing`)."""
        if self._requested is not None:
            return self._requested
        return super().closing()

    def hand_to(self, wakeup: Wakeup | None) -> None:
        """Wake `wakeup` (the stream that owns the socket, and writes at once)
        instead of a writer task, from now on and for every queue, its
        subscriptions' included, and wake it now; None: a plain `Waker` again
        (drops the stream)."""
        self.wakeup = wakeup if wakeup is not None else Waker()
        self.queue.hand_to(wakeup)
        for subscription in self._subscriptions.values():
            subscription.queue.hand_to(wakeup)
        if wakeup is not None:
            # Whatever is queued (the replies at least) is written now.
            wakeup.set()

    @property
    def requested(self) -> Ending | None:
        """The close the reader asked for (garbage), if any."""
        return self._requested

    def ready(self) -> tuple[list[str], Subscription | None]:
        """What can be written now without waiting, in order: the replies, then
        the live events of every subscription; up to a new subscription, whose
        start (`start_subscription`: `subscribed` and the replay) must come next,
        before anything after it."""
        frames: list[str] = []
        outbox = self._outbox
        if outbox is not None:
            while outbox:
                item = outbox.popleft()
                if not isinstance(item, str):
                    return frames, item
                frames.append(item)
            self._outbox = None
        for subscription in tuple(self._subscriptions.values()):
            if not subscription.live:
                continue
            items = subscription.queue.drain()
            if not items:
                continue
            if self._must_stop():
                break
            if self._remembers(subscription):
                for delivery in items:
                    if delivery.appointment_id is not None:
                        self.owned.remember(delivery.appointment_id)
            frames.extend(delivery_texts(items))
            self._count(items)
        return frames, None

    def ready_replies(self) -> list[str]:
        """The replies queued (the errors that explain a requested close)."""
        outbox, self._outbox = self._outbox, None
        return [item for item in outbox or () if isinstance(item, str)]

    async def write(self, send: Send) -> Ending:
        """Send everything queued, in order, until the connection must end (the
        writer task of a connection that does not own its socket)."""
        wakeup = self.wakeup
        assert isinstance(wakeup, Waker), "a handed-over connection has no writer task"
        try:
            while True:
                await wakeup.wait()
                wakeup.clear()
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
        for frame in self.ready_replies():
            await send(frame)

    async def _flush(self, send: Send) -> None:
        while True:
            before = self.delivered
            frames, starting = self.ready()
            if self.delivered != before:
                WS_DELIVERIES.inc(self.delivered - before)
            for frame in frames:
                await send(frame)
            if starting is None:
                return
            await self.start_subscription(starting, send)

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
        """Events only; `notify_deliveries_total` is counted by the writer from
        `delivered` (the socket-owning stream once per flush: `service/transports/writes.py`)."""
        self.delivered += sum(1 for item in items if item.is_event)

    async def start_subscription(self, subscription: Subscription, send: Send) -> None:
        """A new subscription's `subscribed`, `gap` and replay; live from then on."""
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
        async for page in subscription.replayed(replay):
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
            dropped += subscription.queue.dropped
            await subscription.end(reason=reason)
        if not self._admitted:
            return
        self._hub.untrack(self.queue)
        duration = self._release()
        assert duration is not None
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
