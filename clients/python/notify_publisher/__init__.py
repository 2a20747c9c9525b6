"""Publish appointment events to the notification service through Redis.

    from notify_publisher import SyncPublisher

    with SyncPublisher.from_env() as publisher:      # NOTIFY_REDIS_URL, ...
        event_id = publisher.publish(event)

`Publisher` is the asyncio twin. `SyncHttpPublisher` and `HttpPublisher` publish
through the service's HTTP API instead (`POST /v1/events`, a service token), for
backends that cannot reach Redis. The event models, the Redis key scheme and the
publish script (`publish.lua`) live here once; the service imports them.
"""

from notify_publisher.aio import Publisher
from notify_publisher.blocking import SyncPublisher
from notify_publisher.config import PublisherConfig
from notify_publisher.errors import (
    ConfigurationError,
    EventTooLargeError,
    IdempotencyKeyInFlightError,
    IdempotencyKeyReusedError,
    InvalidEventError,
    NotDurableError,
    PublisherError,
    PublishRefusedError,
)
from notify_publisher.events import AppointmentData, EventCreate, EventStored, EventType
from notify_publisher.http import (
    HttpPublisher,
    PublishRejectedError,
    RetryPolicy,
    SyncHttpPublisher,
)
from notify_publisher.keys import RedisKeys
from notify_publisher.request import SCRIPT, PublishResult
from notify_publisher.topology import RedisMode, RedisTopology

__all__ = [
    "SCRIPT",
    "AppointmentData",
    "ConfigurationError",
    "EventCreate",
    "EventStored",
    "EventTooLargeError",
    "EventType",
    "HttpPublisher",
    "IdempotencyKeyInFlightError",
    "IdempotencyKeyReusedError",
    "InvalidEventError",
    "NotDurableError",
    "PublishRefusedError",
    "PublishRejectedError",
    "PublishResult",
    "Publisher",
    "PublisherConfig",
    "PublisherError",
    "RedisKeys",
    "RedisMode",
    "RedisTopology",
    "RetryPolicy",
    "SyncHttpPublisher",
    "SyncPublisher",
]
