"""Every stream, on either transport, has exactly one `stream_opened` and one
`stream_closed` line (the audit trail of who watched whose appointments), whatever
ended it. A WebSocket subscription is a stream; its connection has its own
`ws_closed` summary."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from tests.conftest import SettingsFactory, Tokens, bearer
from tests.support.app_server import RunningApp, run_app
from tests.support.raw_clients import (
    RawSSE,
    all_ended,
    burst,
    open_ws_subscribed,
    send_and_wait,
    wait_ws_closed,
    ws_reset,
)

# close_reason → subject of the streams ended that way (one SSE, one WebSocket).
REASONS = (
    "client_gone",
    "too_slow",
    "token_expired",
    "revoked",
    "ticket_deleted",
    "unsubscribed",
    "policy",
    "shutdown",
)


def lines_of(
    logs: Sequence[Mapping[str, Any]], event: str, subject: str
) -> list[Mapping[str, Any]]:
    return [line for line in logs if line["event"] == event and line.get("subject") == subject]


async def issue_ticket(http: httpx.AsyncClient, token: str) -> str:
    answer = await http.post("/v1/stream-tickets", headers=bearer(token))
    assert answer.status_code == 201, answer.text
    ticket: str = answer.json()["ticket"]
    return ticket


async def end_every_way(app: RunningApp, tokens: Tokens, http: httpx.AsyncClient) -> None:
    async def both(
        subject: str,
        end: Callable[[RawSSE, Any], Awaitable[None]],
        token: str | None = None,
        query: str = "",
    ) -> None:
        token = token or tokens.patient(subject)
        sse = await RawSSE.open(
            app, None if query else token, path=f"/v1/patients/me/events{query}"
        )
        ws = await open_ws_subscribed(app, None if query else token, query=query)
        await end(sse, ws)
        await all_ended(app)

    async def client_gone(sse: RawSSE, ws: Any) -> None:
        await sse.reset()
        await ws_reset(ws)

    async def read_both_to_end(sse: RawSSE, ws: Any) -> None:
        await sse.read_to_end()
        await sse.close()
        await wait_ws_closed(ws)

    async def too_slow(sse: RawSSE, ws: Any) -> None:
        burst(app, "pt_log_too_slow", 5)
        await read_both_to_end(sse, ws)

    async def revoke(sse: RawSSE, ws: Any) -> None:
        until = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
        answer = await http.post(
            "/v1/revocations",
            json={"sub": "pt_log_revoked", "until": until},
            headers=bearer(tokens.admin()),
        )
        assert answer.status_code == 201, answer.text
        await read_both_to_end(sse, ws)

    await both("pt_log_client_gone", client_gone)
    await both("pt_log_too_slow", too_slow)
    await both(
        "pt_log_token_expired", read_both_to_end, tokens.patient("pt_log_token_expired", ttl_s=3)
    )
    await both("pt_log_revoked", revoke)

    owner = tokens.patient("pt_log_ticket_deleted")
    ticket = await issue_ticket(http, owner)

    async def delete_ticket(sse: RawSSE, ws: Any) -> None:
        answer = await http.delete(f"/v1/stream-tickets/{ticket}", headers=bearer(owner))
        assert answer.status_code == 204, answer.text
        await read_both_to_end(sse, ws)

    await both("pt_log_ticket_deleted", delete_ticket, query=f"?ticket={ticket}")

    # WebSocket only: the subscription ends, the connection goes on.
    ws = await open_ws_subscribed(app, tokens.patient("pt_log_unsubscribed"))
    await send_and_wait(ws, {"type": "unsubscribe"}, "unsubscribed")
    await ws.close()
    # Garbage frames past the threshold: close 1008.
    ws = await open_ws_subscribed(app, tokens.patient("pt_log_policy"))
    for _ in range(app.state.settings.ws_max_invalid_messages + 1):
        await ws.send("not json")
    assert await wait_ws_closed(ws) == 1008
    # An SSE stream ended by its client politely, for the policy subject's SSE line.
    sse = await RawSSE.open(app, tokens.patient("pt_log_policy"))
    await sse.close()
    sse = await RawSSE.open(app, tokens.patient("pt_log_unsubscribed"))
    await sse.close()
    await all_ended(app)

    await both("pt_log_shutdown", lambda sse, ws: _drain(app, sse, ws, read_both_to_end))


async def _drain(
    app: RunningApp, sse: RawSSE, ws: Any, then: Callable[[RawSSE, Any], Awaitable[None]]
) -> None:
    app.state.begin_drain()
    await then(sse, ws)


@pytest.mark.timeout(240)
async def test_one_opened_and_one_closed_line_per_stream(
    make_settings: SettingsFactory, tokens: Tokens
) -> None:
    settings = make_settings(client_queue_max=2, shutdown_grace_s=4.0, shutdown_jitter_fraction=0.2)
    async with (
        run_app(settings) as app,
        httpx.AsyncClient(base_url=app.base_url, timeout=30) as http,
    ):
        with capture_logs() as logs:
            await end_every_way(app, tokens, http)
    expected_sse_reason = {
        # The SSE client of these subjects went away on its own.
        "unsubscribed": "client_gone",
        "policy": "client_gone",
    }
    for reason in REASONS:
        subject = f"pt_log_{reason}"
        opened = lines_of(logs, "stream_opened", subject)
        closed = lines_of(logs, "stream_closed", subject)
        by_transport = {
            transport: (
                [line for line in opened if line["transport"] == transport],
                [line for line in closed if line["transport"] == transport],
            )
            for transport in ("sse", "ws")
        }
        for transport, (opened_here, closed_here) in by_transport.items():
            assert len(opened_here) == 1, (reason, transport, opened_here)
            assert len(closed_here) == 1, (reason, transport, closed_here)
            want = reason if transport == "ws" else expected_sse_reason.get(reason, reason)
            assert closed_here[0]["close_reason"] == want, (transport, json.dumps(closed_here))
            assert closed_here[0]["route"] == opened_here[0]["route"]
