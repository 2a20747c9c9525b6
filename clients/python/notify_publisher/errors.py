"""The exceptions of the publisher package: one base class, `PublisherError`.

What a caller does with each:

- `ConfigurationError`: fix the setting it names (never retried);
- `InvalidEventError`, `EventTooLargeError`: fix the event (never retried);
- `IdempotencyKeyReusedError`: the key already stored another event (a bug of
  the caller: a key names one event);
- `IdempotencyKeyInFlightError`: the first publish with this key is still waiting
  for replicas; retry later with the same key;
- `PublishRefusedError` (`cause` names why: `unavailable`, `redis_oom`,
  `redis_readonly`, ..., `not_durable`): Redis could not store or confirm the
  event; retry with the same idempotency key, which never stores it twice. `NotDurableError` is the one
  for a durable publish whose replicas did not confirm in time.
"""

from __future__ import annotations


class PublisherError(Exception):
    """Base class of every error this package raises."""

    code: str = "publish_failed"


class ConfigurationError(PublisherError, ValueError):
    """A setting that cannot work; the message names it (e.g. NOTIFY_REDIS_URL)."""

    code = "configuration"


class InvalidEventError(PublisherError, ValueError):
    """The event breaks a business rule (e.g. `starts_at` not before `ends_at`)."""

    code = "invalid_event"


class EventTooLargeError(PublisherError, ValueError):
    """The event's JSON exceeds `MAX_EVENT_BYTES`; nothing was stored."""

    code = "event_too_large"

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"the event is {size} bytes as stored; the limit is {limit}")
        self.size = size
        self.limit = limit


class IdempotencyKeyReusedError(PublisherError):
    """The idempotency key was already used for another event (HTTP 422)."""

    code = "idempotency_key_reused"


class IdempotencyKeyInFlightError(PublisherError):
    """The first publish with this key is still waiting for replicas (HTTP 409)."""

    code = "idempotency_key_in_flight"


class PublishRefusedError(PublisherError):
    """Redis did not store the event, or could not confirm it: retry-able with the
    same idempotency key, after `retry_after_s`. `cause` names why, the same string
    as the service's 503 `code`: `unavailable` (unreachable through every retry),
    `redis_oom`, `redis_readonly`, `redis_loading`, `redis_busy`, `redis_noscript`,
    `redis_masterdown`, `redis_clusterdown`, `redis_tryagain`, ... (the table is
    `notify_publisher.refusals`), or `not_durable`."""

    code = "publish_refused"

    def __init__(self, cause: str, message: str | None = None, *, retry_after_s: int = 1) -> None:
        super().__init__(message or f"Redis refused the publish: {cause}")
        self.cause = cause
        self.retry_after_s = retry_after_s


class NotDurableError(PublishRefusedError):
    """A durable publish was stored on the primary, but fewer replicas than asked
    confirmed it in time (WAIT). It may be lost by a failover; retrying with the
    same idempotency key waits again without storing it twice."""

    code = "not_durable"

    def __init__(self, *, event_id: str, wanted: int, confirmed: int) -> None:
        super().__init__(
            "not_durable",
            f"event {event_id} reached {confirmed} of {wanted} replicas in time",
        )
        self.event_id = event_id
        self.wanted = wanted
        self.confirmed = confirmed
