"""One table says how every close reason reaches each transport."""

from __future__ import annotations

from service.fanout.closing import ENDINGS, PRECEDENCE, CloseReason
from service.schemas.ws import CloseCode, ReconnectMessage


def test_every_reason_has_exactly_one_row() -> None:
    assert set(ENDINGS) == set(CloseReason)
    assert all(ending.reason is reason for reason, ending in ENDINGS.items())


def test_retryable_endings_hint_on_both_transports() -> None:
    for ending in ENDINGS.values():
        if ending.reconnect is not None:
            assert ending.sse_event == "reconnect", ending
            assert ending.ws_code in (
                CloseCode.GOING_AWAY,
                CloseCode.TRY_AGAIN_LATER,
                CloseCode.TOO_SLOW,
            ), ending
            # The hint is a valid `reconnect` message.
            ReconnectMessage(reason=ending.reconnect, retry_ms=1000)
        elif ending.sse_event == "reconnect":
            raise AssertionError(f"SSE says reconnect but WebSocket does not: {ending}")


def test_lost_credentials_close_for_good() -> None:
    for reason in (CloseReason.TOKEN_EXPIRED, CloseReason.REVOKED, CloseReason.TICKET_DELETED):
        ending = ENDINGS[reason]
        assert (ending.sse_event, ending.reconnect) == ("closed", None)
        assert ending.ws_code in (CloseCode.TOKEN_EXPIRED, CloseCode.REVOKED)
    assert PRECEDENCE[:3] == (
        CloseReason.REVOKED,
        CloseReason.TICKET_DELETED,
        CloseReason.TOKEN_EXPIRED,
    )


def test_nothing_is_written_to_a_client_that_is_gone() -> None:
    gone = ENDINGS[CloseReason.CLIENT_GONE]
    assert (gone.sse_event, gone.ws_code) == (None, None)
