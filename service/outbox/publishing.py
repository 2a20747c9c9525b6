"""How the relay publishes one row: through the service's own publish path (the
same atomic script as the API, the CLI and the library), with an idempotency key
so that a row published twice (a relay killed between the publish and the
commit that marks the row) is one event."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from notify_publisher.batch import Durability
from notify_publisher.config import IDEMPOTENCY_TTL_S
from notify_publisher.events import EventCreate
from notify_publisher.keys import RedisKeys

from service.brokers.base import Broker
from service.services.publisher import publish


class OutboxPublish(Protocol):
    """Publish `event` once per `idempotency_key`; returns its history id.

    Raises `InvalidEventError` / `EventTooLargeError` for an event that can never
    be published (the row is set aside) and `BrokerUnavailableError` (or any other
    error) for a failure worth retrying."""

    async def __call__(self, event: EventCreate, *, idempotency_key: str) -> str: ...


@dataclass(frozen=True, slots=True)
class ServicePublish:
    """`OutboxPublish` through `service.services.publisher.publish`."""

    broker: Broker
    keys: RedisKeys
    history_maxlen: int
    history_ttl_s: int
    # How long a row's key is remembered (NOTIFY_IDEMPOTENCY_TTL_S): a row
    # published again within it is answered with its first id, stored once.
    idempotency_ttl_s: int = IDEMPOTENCY_TTL_S
    durability: Durability | None = None

    async def __call__(self, event: EventCreate, *, idempotency_key: str) -> str:
        published = await publish(
            broker=self.broker,
            keys=self.keys,
            event=event,
            history_maxlen=self.history_maxlen,
            history_ttl_s=self.history_ttl_s,
            idempotency_key=idempotency_key,
            idempotency_ttl_s=self.idempotency_ttl_s,
            durability=self.durability,
        )
        assert published.event.id is not None
        return published.event.id
