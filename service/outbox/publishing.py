"""How the relay publishes: through the service's own publish path (the publisher
package's script, as the API, the CLI and the library use it), each row with an
idempotency key, so that a row published twice (a relay killed between the
publish and the commit that marks the row) is one event.

A round carries at most one row per patient: it goes to Redis as one pipeline
(one per shard primary in Cluster), in order, and a patient's next row waits for
the next round. Whatever happens to a round (a dropped connection, a refused
write), no patient's later row is ever stored before its earlier one."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from notify_publisher import errors as publisher_errors
from notify_publisher.batch import Durability
from notify_publisher.config import IDEMPOTENCY_TTL_S
from notify_publisher.events import EventCreate
from notify_publisher.keys import RedisKeys
from notify_publisher.request import PublishRequest, PublishResult, build_request, prepare_event

from service.brokers.base import Broker
from service.failures import DomainError
from service.services.errors import (
    BrokerUnavailableError,
    EventTooLargeError,
    IdempotencyKeyInFlightError,
    IdempotencyKeyReusedError,
    InvalidEventError,
    NotDurableError,
)

# One row of a round: its event and its idempotency key.
RoundItem = tuple[EventCreate, str]


class OutboxPublish(Protocol):
    """Publish one round, in order; for each row its history id (a replay's is the
    first publish's) or its error: `InvalidEventError`, `EventTooLargeError`,
    `IdempotencyKeyReusedError` (never publishable: the row is set aside), or
    another `DomainError` (worth retrying). Raises `BrokerUnavailableError` (or
    anything else) when the round as a whole failed."""

    async def __call__(self, items: Sequence[RoundItem]) -> list[str | DomainError]: ...


@dataclass(frozen=True, slots=True)
class ServicePublish:
    """`OutboxPublish` through the broker's `publish_events` (the script of
    `service.services.publisher.publish`, pipelined)."""

    broker: Broker
    keys: RedisKeys
    history_maxlen: int
    history_ttl_s: int
    # How long a row's key is remembered (NOTIFY_IDEMPOTENCY_TTL_S): a row
    # published again within it is answered with its first id, stored once.
    idempotency_ttl_s: int = IDEMPOTENCY_TTL_S
    durability: Durability | None = None

    def _request(self, event: EventCreate, key: str) -> PublishRequest | DomainError:
        try:
            prepared = prepare_event(event)
        except publisher_errors.InvalidEventError as exc:
            return InvalidEventError(str(exc))
        except publisher_errors.EventTooLargeError as exc:
            return EventTooLargeError(exc.size, exc.limit)
        return build_request(
            prepared,
            keys=self.keys,
            maxlen=self.history_maxlen,
            ttl_s=self.history_ttl_s,
            sharded=self.broker.sharded,
            idempotency_key=key,
            idempotency_ttl_s=self.idempotency_ttl_s,
            hold_ms=self.durability.hold_ms if self.durability is not None else 0,
            owner=uuid.uuid4().hex,
        )

    async def __call__(self, items: Sequence[RoundItem]) -> list[str | DomainError]:
        results: list[str | DomainError | PublishRequest] = [
            self._request(event, key) for event, key in items
        ]
        requests = [r for r in results if isinstance(r, PublishRequest)]
        outcomes = iter(await self.broker.publish_events(requests, self.durability))
        answers: list[str | DomainError] = []
        for result in results:
            if not isinstance(result, PublishRequest):
                answers.append(result)
                continue
            outcome = next(outcomes)
            if isinstance(outcome, PublishResult):
                answers.append(outcome.id)
            elif isinstance(outcome, publisher_errors.IdempotencyKeyReusedError):
                answers.append(IdempotencyKeyReusedError())
            elif isinstance(outcome, publisher_errors.IdempotencyKeyInFlightError):
                answers.append(IdempotencyKeyInFlightError())
            elif isinstance(outcome, publisher_errors.NotDurableError):
                answers.append(NotDurableError())
            else:
                # The brokers raise Redis' refusals themselves (as `publish` expects).
                answers.append(BrokerUnavailableError(outcome.code))
        return answers
