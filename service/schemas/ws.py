"""The WebSocket protocol (`WS /v1/ws`): every frame is a JSON object with a `type`.

Client → server frames form one discriminated union (`ClientMessage`), server →
client frames another (`ServerMessage`). `docs/asyncapi.json` is generated from
these models (`python -m service.asyncapi`); a test fails when the two drift.

Client frames ignore fields they do not define: a newer client keeps working
against an older server, and a field such as `sub` or `patient_id` on a `command`
has no effect (the subject always comes from the verified token).
"""

from __future__ import annotations

from enum import IntEnum, StrEnum
from typing import Annotated, Literal, Self

from notify_publisher.events import EventStored, OpaqueId, StreamId, Timestamp
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    model_validator,
)

# A client's correlation id, echoed in the reply as `reply_to`.
ClientRef = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
# Server-assigned, per connection: `s1`, `s2`, ...
SubscriptionId = Annotated[str, StringConstraints(pattern=r"^s[0-9]{1,6}$")]
# A JWT is a few hundred bytes; the verifier refuses anything above this anyway.
Token = Annotated[str, StringConstraints(min_length=1, max_length=8192)]


class CloseCode(IntEnum):
    """Close codes sent after the handshake (a refused handshake is an HTTP 401)."""

    NORMAL = 1000
    GOING_AWAY = 1001  # server shutdown or drain: reconnect (hint sent first)
    POLICY = 1008  # too many invalid frames
    TOO_BIG = 1009  # a frame above the size limit (sent by uvicorn itself)
    INTERNAL = 1011  # unexpected server error
    TRY_AGAIN_LATER = 1013  # over capacity or Redis unreachable (hint sent first)
    TOKEN_EXPIRED = 4001  # the token expired (`token_expiring` came first)
    REVOKED = 4003  # token, subject or ticket revoked
    TOO_SLOW = 4008  # the client did not read fast enough (hint sent first)
    UNAUTHORIZED = 4401  # first-message `auth` missing, late or invalid


class ErrorCode(StrEnum):
    """Stable `error.code` values; the connection stays open after each of them."""

    INVALID_MESSAGE = "invalid_message"
    UNSUPPORTED_TYPE = "unsupported_type"
    UNAUTHORIZED = "unauthorized"
    SUBJECT_MISMATCH = "subject_mismatch"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    ALREADY_SUBSCRIBED = "already_subscribed"
    TOO_MANY_SUBSCRIPTIONS = "too_many_subscriptions"
    NOT_SUBSCRIBED = "not_subscribed"
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"


class CommandAction(StrEnum):
    CONFIRM = "confirm"
    CANCEL = "cancel"
    REQUEST_RESCHEDULE = "request_reschedule"


# --- client → server -------------------------------------------------------------


class _ClientMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    id: ClientRef | None = Field(
        default=None, description="Optional correlation id, echoed as `reply_to`."
    )


class AuthMessage(_ClientMessage):
    """First frame when the handshake carried no ticket or bearer header (within
    `NOTIFY_WS_AUTH_TIMEOUT_S`); later, a fresh token of the same subject extends
    the connection's lifetime. Answered `authenticated`."""

    type: Literal["auth"]
    token: Token


class SubscribeMessage(_ClientMessage):
    """Receive a patient's events: the caller's own (patients), optionally one
    appointment's; staff name the patient. With `since` (the last event id seen),
    what history still holds after it is replayed first, like SSE's Last-Event-ID."""

    type: Literal["subscribe"]
    patient_id: OpaqueId | None = Field(default=None, description="Staff only.")
    appointment_id: OpaqueId | None = None
    since: StreamId | None = None


class UnsubscribeMessage(_ClientMessage):
    """Stop one subscription, or all of them without `subscription_id`."""

    type: Literal["unsubscribe"]
    subscription_id: SubscriptionId | None = None


class AckMessage(_ClientMessage):
    """Advisory: the client processed events up to `event_id`. No reply; the
    server keeps no cursor (resume with `subscribe.since`)."""

    type: Literal["ack"]
    event_id: StreamId


class PingMessage(_ClientMessage):
    """Application-level liveness check, answered `pong`."""

    type: Literal["ping"]


class CommandMessage(_ClientMessage):
    """Act on one of the caller's own appointments. Answered `command_accepted`
    once written to the commands stream; `id` is passed on as `client_ref` so that
    backends can deduplicate a command retried after a reconnect."""

    type: Literal["command"]
    action: CommandAction
    appointment_id: OpaqueId
    preferred_starts_at: Timestamp | None = Field(
        default=None, description="Only with `request_reschedule`."
    )

    @model_validator(mode="after")
    def _preferred_only_for_reschedule(self) -> Self:
        if self.preferred_starts_at is not None and self.action != CommandAction.REQUEST_RESCHEDULE:
            raise ValueError("preferred_starts_at is only valid with request_reschedule")
        return self


ClientMessage = Annotated[
    AuthMessage | SubscribeMessage | UnsubscribeMessage | AckMessage | PingMessage | CommandMessage,
    Field(discriminator="type"),
]
CLIENT_MESSAGE: TypeAdapter[
    AuthMessage | SubscribeMessage | UnsubscribeMessage | AckMessage | PingMessage | CommandMessage
] = TypeAdapter(ClientMessage)
CLIENT_TYPES: frozenset[str] = frozenset(
    {"auth", "subscribe", "unsubscribe", "ack", "ping", "command"}
)


# --- server → client -------------------------------------------------------------


class _ServerMessage(BaseModel):
    # `type` has a default so that the server can build messages tersely; the
    # generated schema still lists it as required.
    model_config = ConfigDict(frozen=True, json_schema_serialization_defaults_required=True)


class _Reply(_ServerMessage):
    reply_to: ClientRef | None = Field(default=None, description="The request's `id`, if any.")


class EventMessage(_ServerMessage):
    """One appointment event; `event.id` is what `subscribe.since` takes to resume."""

    type: Literal["event"] = "event"
    event: EventStored


class EventsMessage(_ServerMessage):
    """Several events of one subscription, in order, in one frame: sent instead of
    consecutive `event` messages when more than one was waiting for the socket (a
    client that fell behind catches up in fewer frames)."""

    type: Literal["events"] = "events"
    events: list[EventStored] = Field(min_length=2)


class AuthenticatedMessage(_Reply):
    type: Literal["authenticated"] = "authenticated"
    expires_at: int = Field(description="Unix seconds; the connection closes 4001 then.")


class SubscribedMessage(_Reply):
    type: Literal["subscribed"] = "subscribed"
    subscription_id: SubscriptionId
    patient_id: OpaqueId
    appointment_id: OpaqueId | None = None
    resumed: bool = Field(description="True when a replay from `since` follows.")
    resume_point: StreamId = Field(
        description=(
            "Pass as `since` to resume when no event has been received since this reply: "
            "the `since` given, or the history head when none was (`0-0`: history empty)."
        )
    )


class UnsubscribedMessage(_Reply):
    type: Literal["unsubscribed"] = "unsubscribed"
    subscription_ids: list[SubscriptionId]


class PongMessage(_Reply):
    type: Literal["pong"] = "pong"


class CommandAcceptedMessage(_Reply):
    type: Literal["command_accepted"] = "command_accepted"
    command_id: StreamId = Field(description="The entry id in the commands stream.")


class ErrorMessage(_Reply):
    type: Literal["error"] = "error"
    code: ErrorCode
    message: str


class GapMessage(_ServerMessage):
    """History no longer holds everything after the client's last id: refetch."""

    type: Literal["gap"] = "gap"
    oldest_id: StreamId | None = None
    subscription_id: SubscriptionId | None = Field(
        default=None, description="Absent when the gap followed a broker reconnect."
    )


class TokenExpiringMessage(_ServerMessage):
    """Send a fresh `auth` before `expires_at` to keep the connection."""

    type: Literal["token_expiring"] = "token_expiring"
    expires_at: int


class ReconnectMessage(_ServerMessage):
    """Sent just before a close the client should retry (1001, 1013, 4008): wait
    `retry_ms`, reconnect, and resubscribe with `since`."""

    type: Literal["reconnect"] = "reconnect"
    reason: Literal["shutdown", "too_slow", "over_capacity", "unavailable"]
    retry_ms: int


ServerMessageType = (
    EventMessage
    | EventsMessage
    | AuthenticatedMessage
    | SubscribedMessage
    | UnsubscribedMessage
    | PongMessage
    | CommandAcceptedMessage
    | ErrorMessage
    | GapMessage
    | TokenExpiringMessage
    | ReconnectMessage
)
ServerMessage = Annotated[ServerMessageType, Field(discriminator="type")]
SERVER_MESSAGE: TypeAdapter[ServerMessageType] = TypeAdapter(ServerMessage)

CLIENT_MODELS: tuple[type[BaseModel], ...] = (
    AuthMessage,
    SubscribeMessage,
    UnsubscribeMessage,
    AckMessage,
    PingMessage,
    CommandMessage,
)
SERVER_MODELS: tuple[type[BaseModel], ...] = (
    EventMessage,
    EventsMessage,
    AuthenticatedMessage,
    SubscribedMessage,
    UnsubscribedMessage,
    PongMessage,
    CommandAcceptedMessage,
    ErrorMessage,
    GapMessage,
    TokenExpiringMessage,
    ReconnectMessage,
)
