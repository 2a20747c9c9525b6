"""How the relay publishes one row: through the service's own publish path (the
same atomic script as the API, the CLI and the library), with an idempotency key
so that a row published twice (a relay killed between the publish and the
commit that marks the row) is one event."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from service.brokers.base import Broker
from service.schemas.events import EventCreate
from service.services.channels import RedisKeys
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

    async def __call__(self, event: EventCreate, *, idempotency_key: str) -> str:
        stored = await publish(
            broker=self.broker,
            keys=self.keys,
            event=event,
            history_maxlen=self.history_maxlen,
            history_ttl_s=self.history_ttl_s,
        )
        assert stored.id is not None
        return stored.id
