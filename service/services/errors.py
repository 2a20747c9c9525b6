"""Domain errors. They know nothing of HTTP: `service/errors.py` maps them to
status codes in one place, the WebSocket router to close codes."""

from __future__ import annotations

from service.failures import (
    BrokerRefusedError,
    BrokerUnavailableError,
    DomainError,
    UnavailableError,
)

__all__ = [
    "BrokerRefusedError",
    "BrokerUnavailableError",
    "ConflictError",
    "DomainError",
    "ForbiddenError",
    "IdempotencyKeyInFlightError",
    "IdempotencyKeyReusedError",
    "InvalidEventError",
    "NotDurableError",
    "NotFoundError",
    "OverCapacityError",
    "PatientNotFoundError",
    "RateLimitedError",
    "UnauthorizedError",
    "UnavailableError",
]


class UnauthorizedError(DomainError):
    """Who are you: one message for a missing, bad, expired or revoked credential."""

    code = "unauthorized"
    public_message = "unauthorized"

    def __init__(self, reason: str = "invalid") -> None:
        # `reason` feeds a bounded metric label and the log; never the response.
        super().__init__(reason)
        self.reason = reason


class ForbiddenError(DomainError):
    """Known caller, not allowed; used only where the answer leaks nothing."""

    code = "forbidden"
    public_message = "forbidden"


class NotFoundError(DomainError):
    """Unknown resource, or somebody else's: the two are indistinguishable."""

    code = "not_found"
    public_message = "not found"


class PatientNotFoundError(NotFoundError):
    pass


class ConflictError(DomainError):
    """Conflicts with a request still in progress (HTTP 409): retry later."""

    code = "conflict"
    public_message = "conflicts with a request in progress"
    retry_after_s = 1


class RateLimitedError(DomainError):
    """Too many requests from this caller (HTTP 429): retry later."""

    code = "rate_limited"
    public_message = "too many requests, slow down"
    retry_after_s = 1


class InvalidEventError(DomainError):
    """The event has the right shape but breaks a business rule (HTTP 400)."""

    code = "invalid_event"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.public_message = message


class EventTooLargeError(DomainError):
    """The event's JSON is above `MAX_EVENT_BYTES` (HTTP 413): refused before it is
    stored, since no live client would ever be sent it."""

    code = "event_too_large"

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(size)
        self.public_message = f"event is {size} bytes as stored, above the limit of {limit}"


class OverCapacityError(UnavailableError):
    code = "over_capacity"
    public_message = "over capacity"


class IdempotencyKeyReusedError(DomainError):
    """The `Idempotency-Key` already stored another event (HTTP 422, IETF draft)."""

    code = "idempotency_key_reused"
    public_message = "this Idempotency-Key was used for another event"


class IdempotencyKeyInFlightError(ConflictError):
    """The first request with this `Idempotency-Key` is still waiting for
    replicas (HTTP 409, IETF draft): retry it later, with the same key."""

    code = "idempotency_key_in_flight"
    public_message = "a request with this Idempotency-Key is still in progress"


class NotDurableError(UnavailableError):
    """A durable publish (NOTIFY_PUBLISH_WAIT_REPLICAS) was stored on the primary
    but fewer replicas than asked acknowledged it in time: a failover could still
    lose it. Retry-able with the same key (the retry waits again, stores nothing)."""

    code = "not_durable"
    public_message = (
        "stored on the primary, but not confirmed by enough replicas in time: "
        "retry with the same Idempotency-Key"
    )
    retry_after_s = 1
