"""Every way a stream ends, and what each transport says about it: one table.

`ENDINGS[reason]` gives the SSE frame (`event: reconnect` with a jittered `retry:`
when reconnecting can succeed, `event: closed` when the credentials are gone,
nothing when the client is gone), the WebSocket close code and reason (after a
`reconnect` message when retrying can succeed), and the `close_reason` of the
`stream_closed` / `ws_closed` log lines (`reason.value`). ARCHITECTURE.md has the
same table with who sets each reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Literal

from service.schemas.ws import CloseCode

HintReason = Literal["shutdown", "too_slow", "over_capacity", "unavailable"]


class CloseReason(StrEnum):
    """Every way a stream (SSE) or a connection or subscription (WebSocket) ends."""

    CLIENT_GONE = "client_gone"
    TOO_SLOW = "too_slow"
    SHUTDOWN = "shutdown"
    TOKEN_EXPIRED = "token_expired"  # noqa: S105
    REVOKED = "revoked"
    TICKET_DELETED = "ticket_deleted"
    BROKER_UNAVAILABLE = "broker_unavailable"
    INTERNAL_ERROR = "internal_error"
    # WebSocket only.
    UNSUBSCRIBED = "unsubscribed"
    POLICY = "policy"
    OVER_CAPACITY = "over_capacity"
    UNAUTHORIZED = "unauthorized"


@dataclass(frozen=True, slots=True)
class Ending:
    reason: CloseReason
    # SSE: the last frame's event, None when nothing more is written.
    sse_event: Literal["reconnect", "closed"] | None
    # WebSocket: close code and reason text; None when no close frame can pass.
    ws_code: CloseCode | None
    ws_reason: str
    # The `reason` a client reads in the SSE frame's data and the WS `reconnect`.
    public: str
    # A reconnect hint first: retrying with the same credentials can succeed.
    reconnect: HintReason | None = None


def _ending(
    reason: CloseReason,
    sse_event: Literal["reconnect", "closed"] | None,
    ws_code: CloseCode | None,
    ws_reason: str,
    public: str | None = None,
    *,
    reconnect: HintReason | None = None,
) -> Ending:
    return Ending(reason, sse_event, ws_code, ws_reason, public or reason.value, reconnect)


R = CloseReason
ENDINGS: Final[dict[CloseReason, Ending]] = {
    e.reason: e
    for e in (
        _ending(R.CLIENT_GONE, None, None, ""),
        _ending(R.TOO_SLOW, "reconnect", CloseCode.TOO_SLOW, "too_slow", reconnect="too_slow"),
        _ending(R.SHUTDOWN, "reconnect", CloseCode.GOING_AWAY, "shutdown", reconnect="shutdown"),
        _ending(R.TOKEN_EXPIRED, "closed", CloseCode.TOKEN_EXPIRED, "token_expired"),
        _ending(R.REVOKED, "closed", CloseCode.REVOKED, "revoked"),
        # The WebSocket client is told "revoked": its credentials are gone either way.
        _ending(R.TICKET_DELETED, "closed", CloseCode.REVOKED, "revoked"),
        _ending(
            R.BROKER_UNAVAILABLE,
            "reconnect",
            CloseCode.TRY_AGAIN_LATER,
            "unavailable",
            "unavailable",
            reconnect="unavailable",
        ),
        # SSE: the response ends; the exception is logged with its traceback.
        _ending(R.INTERNAL_ERROR, None, CloseCode.INTERNAL, "internal error"),
        # A subscription ends, its connection goes on: no close frame.
        _ending(R.UNSUBSCRIBED, None, None, ""),
        _ending(R.POLICY, None, CloseCode.POLICY, "too many invalid messages"),
        _ending(
            R.OVER_CAPACITY,
            "reconnect",
            CloseCode.TRY_AGAIN_LATER,
            "over_capacity",
            reconnect="over_capacity",
        ),
        _ending(R.UNAUTHORIZED, None, CloseCode.UNAUTHORIZED, "unauthorized"),
    )
}
assert set(ENDINGS) == set(CloseReason), "every CloseReason needs its row"

# When several apply to one WebSocket, the credentials' fate wins (not one more
# event after it), then the rest in this order.
PRECEDENCE: Final = (
    R.REVOKED,
    R.TICKET_DELETED,
    R.TOKEN_EXPIRED,
    R.TOO_SLOW,
    R.SHUTDOWN,
)
