"""The one publish path used by the `notify publish` CLI and the HTTP API; it runs
the publisher package's script (`notify_publisher`), as every other publisher does."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from notify_publisher import errors as publisher_errors
from notify_publisher.batch import Durability
from notify_publisher.events import EventCreate, EventStored
from notify_publisher.keys import RedisKeys
from notify_publisher.request import (
    GENERATED_KEY_TTL_S,
    build_request,
    new_idempotency_key,
    prepare_event,
)

from service.brokers.base import Broker
from service.services.errors import (
    BrokerUnavailableError,
    EventTooLargeError,
    IdempotencyKeyInFlightError,
    IdempotencyKeyReusedError,
    InvalidEventError,
    NotDurableError,
)


@dataclass(frozen=True, slots=True)
class Published:
    """The stored event, and whether its idempotency key had stored it before
    (then nothing new was stored or delivered)."""

    event: EventStored
    replayed: bool


async def publish(
    *,
    broker: Broker,
    keys: RedisKeys,
    event: EventCreate,
    history_maxlen: int,
    history_ttl_s: int,
    idempotency_key: str | None = None,
    idempotency_ttl_s: int = GENERATED_KEY_TTL_S,
    durability: Durability | None = None,
) -> Published:
    """Append `event` to its patient's history and publish it live, atomically.

    Raises `InvalidEventError` for a business-rule violation, `EventTooLargeError`
    above `MAX_EVENT_BYTES` (nothing is stored then), `BrokerUnavailableError` when
    Redis cannot be reached, `IdempotencyKeyReusedError` / `IdempotencyKeyInFlightError`
    for a key that stored another event / still waits for replicas,
    `BrokerRefusedError` when Redis refused the write (OOM, READONLY, ...) and
    `NotDurableError` when too few replicas confirmed it in time.
    Without `idempotency_key` one is made up for this call's own retry.
    """
    try:
        prepared = prepare_event(event)
    except publisher_errors.InvalidEventError as exc:
        raise InvalidEventError(str(exc)) from None
    except publisher_errors.EventTooLargeError as exc:
        raise EventTooLargeError(exc.size, exc.limit) from None
    request = build_request(
        prepared,
        keys=keys,
        maxlen=history_maxlen,
        ttl_s=history_ttl_s,
        sharded=broker.sharded,
        idempotency_key=idempotency_key or new_idempotency_key(),
        idempotency_ttl_s=idempotency_ttl_s if idempotency_key else GENERATED_KEY_TTL_S,
        hold_ms=durability.hold_ms if durability is not None else 0,
        owner=uuid.uuid4().hex,
    )
    (outcome,) = await broker.publish_events([request], durability)
    if isinstance(outcome, publisher_errors.IdempotencyKeyReusedError):
        raise IdempotencyKeyReusedError()
    if isinstance(outcome, publisher_errors.IdempotencyKeyInFlightError):
        raise IdempotencyKeyInFlightError()
    if isinstance(outcome, publisher_errors.NotDurableError):
        raise NotDurableError()
    if isinstance(outcome, publisher_errors.PublisherError):
        # The brokers raise Redis' refusals themselves; nothing else is expected.
        raise BrokerUnavailableError(outcome.code)
    return Published(
        event=prepared.stored(outcome.id, outcome.published_at or None),
        replayed=outcome.replayed,
    )
