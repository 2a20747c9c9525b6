"""One publish, as the script sees it: the event prepared once (validated,
stamped, serialized, fingerprinted), then the KEYS and ARGV of `publish.lua`, and
the script's reply read back. Shared by `Publisher`, `SyncPublisher` and the
service's own publish path, so all of them store the same bytes."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any, Final

from redis.exceptions import RedisError

from notify_publisher.errors import (
    EventTooLargeError,
    IdempotencyKeyInFlightError,
    IdempotencyKeyReusedError,
    InvalidEventError,
    PublisherError,
    PublishRefusedError,
)
from notify_publisher.events import MAX_EVENT_BYTES, EventCreate, EventStored
from notify_publisher.keys import RedisKeys, is_idempotency_key
from notify_publisher.refusals import OTHER, refusal_for

# The publish script, shipped as package data (`publish.lua`, KEYS and ARGV in its
# header); the same file serves `redis-cli --eval` users.
SCRIPT: Final = resources.files("notify_publisher").joinpath("publish.lua").read_text("utf-8")
SCRIPT_SHA: Final = hashlib.sha1(SCRIPT.encode(), usedforsecurity=False).hexdigest()

# `"id":"<ms>-<seq>",` as the script splices it in: at most 20 + 1 + 20 digits.
ID_FIELD_ALLOWANCE: Final = len('"id":"",') + 41

# A key the library makes up (the caller gave none) only has to outlive the
# library's own retries of one call, not a caller's retry hours later.
GENERATED_KEY_TTL_S: Final = 600


@dataclass(frozen=True, slots=True)
class PreparedEvent:
    """An event ready for the script: `json` is what history stores (no `id`)."""

    event: EventCreate
    published_at: str
    json: str
    fingerprint: str

    def stored(self, event_id: str, published_at: str | None = None) -> EventStored:
        """The event as stored under `event_id` (a replay keeps the first
        attempt's `published_at`)."""
        return EventStored(
            **self.event.model_dump(),
            id=event_id,
            published_at=published_at or self.published_at,
        )


def fingerprint(event: EventCreate) -> str:
    """SHA-256 of the event's canonical JSON: equal events, equal fingerprints,
    whatever the order of their fields."""
    canonical = json.dumps(
        event.model_dump(mode="json", exclude_none=True), sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def prepare_event(
    event: EventCreate | Mapping[str, Any], *, now: datetime | None = None
) -> PreparedEvent:
    """Validate (`pydantic.ValidationError` for a wrong shape, `InvalidEventError`
    for a broken rule), stamp `published_at` and serialize; `EventTooLargeError`
    above `MAX_EVENT_BYTES` with the id that will be spliced in."""
    model = event if isinstance(event, EventCreate) else EventCreate.model_validate(event)
    violation = model.rule_violation()
    if violation is not None:
        raise InvalidEventError(violation)
    stamp = now or datetime.now(UTC)
    stored = EventStored(**model.model_dump(), published_at=stamp)
    event_json = stored.model_dump_json(exclude_none=True, exclude={"id"})
    size = len(event_json.encode()) + ID_FIELD_ALLOWANCE
    if size > MAX_EVENT_BYTES:
        raise EventTooLargeError(size, MAX_EVENT_BYTES)
    published_at = json.loads(event_json)["published_at"]
    return PreparedEvent(
        event=model, published_at=published_at, json=event_json, fingerprint=fingerprint(model)
    )


def new_idempotency_key() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class PublishRequest:
    """The KEYS and ARGV of one `publish.lua` call."""

    keys: tuple[str, ...]
    args: tuple[str | int, ...]

    @property
    def record_key(self) -> str | None:
        return self.keys[1] if len(self.keys) > 1 else None

    @property
    def holds(self) -> bool:
        """Whether the script marks the key "in flight" (a durable publish)."""
        return len(self.args) > 8 and int(self.args[8]) > 0


def build_request(
    prepared: PreparedEvent,
    *,
    keys: RedisKeys,
    maxlen: int,
    ttl_s: int,
    sharded: bool,
    idempotency_key: str | None,
    idempotency_ttl_s: int,
    hold_ms: int = 0,
    owner: str = "",
) -> PublishRequest:
    """KEYS/ARGV for `prepared`; `sharded` publishes with SPUBLISH (Cluster);
    `hold_ms` > 0 marks the key in flight while a durable publish waits, for
    every caller but `owner` (one per call, kept across its retries)."""
    patient = prepared.event.patient_id
    args: list[str | int] = [
        prepared.json,
        maxlen,
        ttl_s,
        keys.patient_channel(patient),
        "SPUBLISH" if sharded else "PUBLISH",
    ]
    if idempotency_key is None:
        return PublishRequest(keys=(keys.history(patient),), args=tuple(args))
    if not is_idempotency_key(idempotency_key):
        raise ValueError("an idempotency key is 1 to 255 visible ASCII characters")
    args += [prepared.fingerprint, idempotency_ttl_s, prepared.published_at, hold_ms, owner]
    return PublishRequest(
        keys=(keys.history(patient), keys.idempotency(patient, idempotency_key)),
        args=tuple(args),
    )


@dataclass(frozen=True, slots=True)
class PublishResult:
    """The script's answer: the stored id, whether it was a replay of a key seen
    before, and the `published_at` of the attempt that stored it."""

    id: str
    replayed: bool
    published_at: str


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_reply(reply: Any) -> PublishResult:
    event_id, status, published_at = (_text(v) for v in reply)
    return PublishResult(id=event_id, replayed=status == "replayed", published_at=published_at)


def refusal(exc: Exception) -> PublisherError:
    """The package's exception for an error reply of the script (the reply's
    exception is its `__cause__`)."""
    message = str(exc)
    error: PublisherError
    if message.startswith("IDEMPOTENCY_KEY_REUSED"):
        error = IdempotencyKeyReusedError("this idempotency key was used for another event")
    elif message.startswith("IDEMPOTENCY_KEY_IN_FLIGHT"):
        error = IdempotencyKeyInFlightError(
            "the first publish with this idempotency key is still waiting for replicas"
        )
    elif isinstance(exc, RedisError):
        found = refusal_for(exc)
        error = PublishRefusedError(found.cause, found.message, retry_after_s=found.retry_after_s)
    else:
        error = PublishRefusedError(OTHER.cause, OTHER.message)
    error.__cause__ = exc
    return error
