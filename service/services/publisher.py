"""The one publish path used by the library, the `notify publish` CLI and the API."""

from __future__ import annotations

from datetime import UTC, datetime

from service.brokers.base import Broker
from service.schemas.events import MAX_EVENT_BYTES, EventCreate, EventStored
from service.services.channels import RedisKeys
from service.services.errors import EventTooLargeError, InvalidEventError

# `"id":"<ms>-<seq>",` as `splice_id` adds it: at most 20 + 1 + 20 digits.
ID_FIELD_ALLOWANCE = len('"id":"",') + 41


async def publish(
    *,
    broker: Broker,
    keys: RedisKeys,
    event: EventCreate,
    history_maxlen: int,
    history_ttl_s: int,
) -> EventStored:
    """Append `event` to its patient's history and publish it live, atomically.

    Raises `InvalidEventError` for a business-rule violation,
    `EventTooLargeError` above `MAX_EVENT_BYTES` (nothing is stored then) and
    `BrokerUnavailableError` when Redis cannot be reached.
    """
    violation = event.rule_violation()
    if violation is not None:
        raise InvalidEventError(violation)
    stored = EventStored(**event.model_dump(), published_at=datetime.now(UTC))
    event_json = stored.model_dump_json(exclude_none=True, exclude={"id"})
    # With the `id` spliced in on the way out (about 40 bytes), a history entry
    # must still pass the hub's and the replay's check of the same limit.
    size = len(event_json.encode()) + ID_FIELD_ALLOWANCE
    if size > MAX_EVENT_BYTES:
        raise EventTooLargeError(size, MAX_EVENT_BYTES)
    event_id = await broker.publish_event(
        history_key=keys.history(event.patient_id),
        channel=keys.patient_channel(event.patient_id),
        event_json=event_json,
        maxlen=history_maxlen,
        ttl_s=history_ttl_s,
    )
    return stored.model_copy(update={"id": event_id})
