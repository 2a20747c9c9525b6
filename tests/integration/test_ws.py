"""`WS /v1/ws` through a real uvicorn (websockets-sansio) and a real Redis, with the
`websockets` client; a few handshake checks with Starlette's TestClient."""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from starlette.testclient import WebSocketDenialResponse
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from service.config import Settings
from service.fanout.closing import CloseReason
from service.main import create_app
from service.schemas.commands import CommandRecord
from tests.conftest import SettingsFactory, Tokens, bearer
from tests.support.app_server import RunningApp, ServiceProcess, run_app
from tests.support.events import event
from tests.support.metrics import metric
from tests.support.publishing import publish_one
from tests.support.raw_redis import raw_publish
from tests.support.redis_server import RedisServer
from tests.support.socket_peers import WsPeer
from tests.support.waiting import eventually
from tests.support.ws import open_ws

Publisher = Callable[..., Awaitable[str]]


@pytest.fixture
def publish(app: RunningApp) -> Publisher:
    return functools.partial(publish_one, app)


def ws_url(app: RunningApp) -> str:
    return f"{app.ws_url}/v1/ws"


# --- authentication ------------------------------------------------------------------


async def test_auth_by_first_message_then_events(
    app: RunningApp, tokens: Tokens, publish: Publisher
) -> None:
    async with open_ws(ws_url(app)) as ws:
        await ws.send({"type": "auth", "token": tokens.patient("pt_1"), "id": "a1"})
        authenticated = await ws.wait_type("authenticated")
        assert authenticated["reply_to"] == "a1"
        assert authenticated["expires_at"] > time.time()
        subscribed = await ws.request({"type": "subscribe"}, "subscribed")
        assert subscribed["patient_id"] == "pt_1"
        assert subscribed["resumed"] is False
        event_id = await publish("pt_1")
        (received,) = await ws.wait_events(1)
        assert received["id"] == event_id
        assert received["patient_id"] == "pt_1"
        assert received["type"] == "appointment.rescheduled"


async def test_auth_by_bearer_header(app: RunningApp, tokens: Tokens, publish: Publisher) -> None:
    async with open_ws(ws_url(app), token=tokens.patient("pt_1")) as ws:
        await ws.wait_type("authenticated")
        await ws.request({"type": "subscribe"}, "subscribed")
        await publish("pt_1")
        await ws.wait_events(1)


async def test_auth_by_stream_ticket_and_ticket_deletion_closes_4003(
    app: RunningApp, tokens: Tokens, publish: Publisher
) -> None:
    token = tokens.patient("pt_t")
    async with httpx.AsyncClient(base_url=app.base_url, timeout=10) as http:
        created = await http.post("/v1/stream-tickets", headers=bearer(token))
    assert created.status_code == 201, created.text
    ticket = created.json()["ticket"]
    async with (
        open_ws(f"{ws_url(app)}?ticket={ticket}") as ws,
        httpx.AsyncClient(base_url=app.base_url, timeout=10) as http,
    ):
        await ws.wait_type("authenticated")
        await ws.request({"type": "subscribe"}, "subscribed")
        await publish("pt_t")
        await ws.wait_events(1)
        deleted = await http.delete(f"/v1/stream-tickets/{ticket}", headers=bearer(token))
        assert deleted.status_code == 204
        assert await ws.wait_closed() == (4003, "revoked")
    with pytest.raises(InvalidStatus) as caught:
        await connect(f"{ws_url(app)}?ticket={ticket}", proxy=None)
    assert caught.value.response.status_code == 401


@pytest.mark.parametrize("header", ["Bearer not-a-jwt", "Basic abc", "Bearer "])
async def test_bad_header_is_refused_with_http_401(app: RunningApp, header: str) -> None:
    with pytest.raises(InvalidStatus) as caught:
        await connect(ws_url(app), additional_headers={"Authorization": header}, proxy=None)
    response = caught.value.response
    assert response.status_code == 401
    assert json.loads(response.body or b"") == {"detail": "unauthorized", "code": "unauthorized"}


async def test_expired_header_token_is_refused_like_any_bad_token(
    app: RunningApp, tokens: Tokens
) -> None:
    expired = tokens.patient("pt_1", ttl_s=-3600)
    with pytest.raises(InvalidStatus) as caught:
        await connect(ws_url(app), additional_headers=bearer(expired), proxy=None)
    assert caught.value.response.status_code == 401
    assert json.loads(caught.value.response.body or b"")["detail"] == "unauthorized"


@pytest.mark.parametrize(
    "first",
    [
        {"type": "auth", "token": "not-a-jwt"},
        {"type": "subscribe"},
        {"type": "ping"},
        "not json",
    ],
)
async def test_failed_first_message_auth_closes_4401_with_nothing_delivered(
    app: RunningApp, tokens: Tokens, first: dict[str, Any] | str, publish: Publisher
) -> None:
    async with open_ws(ws_url(app)) as ws:
        await ws.send(first)
        code, reason = await ws.wait_closed()
    assert code == 4401
    assert reason == "unauthorized"
    assert ws.messages == []


async def test_bad_token_signature_closes_4401(app: RunningApp) -> None:
    forged = Tokens(secret="another-secret-another-secret-0123456789").patient("pt_1")
    async with open_ws(ws_url(app)) as ws:
        await ws.send({"type": "auth", "token": forged})
        assert await ws.wait_closed() == (4401, "unauthorized")
    assert ws.messages == []


async def test_no_auth_frame_in_time_closes_4401(
    make_settings: SettingsFactory,
) -> None:
    async with (
        run_app(make_settings(ws_auth_timeout_s=0.3)) as app,
        open_ws(ws_url(app)) as ws,
    ):
        assert await ws.wait_closed(timeout_s=5) == (4401, "unauthorized")


def test_testclient_handshake_denial_and_first_message_auth(
    client: TestClient, tokens: Tokens
) -> None:
    with (
        pytest.raises(WebSocketDenialResponse) as caught,
        client.websocket_connect("/v1/ws", headers=bearer("garbage")),
    ):
        pass
    assert caught.value.status_code == 401
    assert caught.value.json() == {"detail": "unauthorized", "code": "unauthorized"}

    with client.websocket_connect("/v1/ws") as ws:
        ws.send_json({"type": "auth", "token": tokens.patient("pt_1")})
        assert ws.receive_json()["type"] == "authenticated"
        ws.send_json({"type": "ping", "id": "p1"})
        assert ws.receive_json() == {"type": "pong", "reply_to": "p1"}


# --- scoping ---------------------------------------------------------------------------


async def test_another_patients_events_never_arrive(
    app: RunningApp, tokens: Tokens, publish: Publisher
) -> None:
    async with (
        open_ws(ws_url(app), token=tokens.patient("pt_1")) as mine,
        open_ws(ws_url(app), token=tokens.patient("pt_2")) as other,
    ):
        await mine.request({"type": "subscribe"}, "subscribed")
        await other.request({"type": "subscribe"}, "subscribed")
        # Naming another patient is "not found", like a patient that does not exist.
        refused = await mine.request({"type": "subscribe", "patient_id": "pt_2"}, "error")
        assert refused["code"] == "not_found"
        await publish("pt_2", "ap_2")
        await publish("pt_1", "ap_1")
        (received,) = await mine.wait_events(1)
        assert received["patient_id"] == "pt_1"
        await other.wait_events(1)
        # Both published on their own channels in this order: had pt_2's event been
        # routed to pt_1, it would have arrived first.
        assert [e["patient_id"] for e in mine.events] == ["pt_1"]
        assert [e["patient_id"] for e in other.events] == ["pt_2"]


async def test_appointment_scoped_subscription_filters(
    app: RunningApp, tokens: Tokens, publish: Publisher
) -> None:
    async with open_ws(ws_url(app), token=tokens.patient("pt_1")) as ws:
        subscribed = await ws.request({"type": "subscribe", "appointment_id": "ap_1"}, "subscribed")
        assert subscribed["appointment_id"] == "ap_1"
        await publish("pt_1", "ap_other")
        await publish("pt_1", "ap_1")
        (received,) = await ws.wait_events(1)
        assert received["appointment_id"] == "ap_1"
        assert [e["appointment_id"] for e in ws.events] == ["ap_1"]


async def test_unsubscribe_stops_delivery(
    app: RunningApp, tokens: Tokens, publish: Publisher
) -> None:
    async with open_ws(ws_url(app), token=tokens.patient("pt_1")) as ws:
        subscribed = await ws.request({"type": "subscribe"}, "subscribed")
        await publish("pt_1", "ap_1")
        await ws.wait_events(1)
        answer = await ws.request(
            {"type": "unsubscribe", "subscription_id": subscribed["subscription_id"]},
            "unsubscribed",
        )
        assert answer["subscription_ids"] == [subscribed["subscription_id"]]
        # A narrower subscription on the same channel shows where the stream is:
        # ap_1's event published before ap_2's would arrive first if still delivered.
        await ws.request({"type": "subscribe", "appointment_id": "ap_2"}, "subscribed")
        await publish("pt_1", "ap_1")
        await publish("pt_1", "ap_2")
        await ws.wait_events(2)
        assert [e["appointment_id"] for e in ws.events] == ["ap_1", "ap_2"]
        unknown = await ws.request({"type": "unsubscribe", "subscription_id": "s999"}, "error")
        assert unknown["code"] == "not_subscribed"


async def test_several_subscriptions_per_connection(
    app: RunningApp, tokens: Tokens, publish: Publisher
) -> None:
    """Staff hold several patients on one socket; overlapping subscriptions are refused
    (an event is never delivered twice) and the connection counts once."""
    async with open_ws(ws_url(app), token=tokens.staff("st_1")) as ws:
        first = await ws.request({"type": "subscribe", "patient_id": "pt_a"}, "subscribed")
        second = await ws.request({"type": "subscribe", "patient_id": "pt_b"}, "subscribed")
        assert first["subscription_id"] != second["subscription_id"]
        overlap = await ws.request(
            {"type": "subscribe", "patient_id": "pt_a", "appointment_id": "ap_1"}, "error"
        )
        assert overlap["code"] == "already_subscribed"
        assert app.state.limiter.total == 1
        await publish("pt_a", "ap_1")
        await publish("pt_b", "ap_2")
        await ws.wait_events(2)
        assert sorted(e["patient_id"] for e in ws.events) == ["pt_a", "pt_b"]
        # A staff token has no stream of its own.
        mine = await ws.request({"type": "subscribe"}, "error")
        assert mine["code"] == "forbidden"
        everything = await ws.request({"type": "unsubscribe"}, "unsubscribed")
        assert sorted(everything["subscription_ids"]) == sorted(
            [first["subscription_id"], second["subscription_id"]]
        )
    await _wait(lambda: app.state.limiter.total == 0, "limit released")


async def test_too_many_subscriptions(make_settings: SettingsFactory, tokens: Tokens) -> None:
    async with (
        run_app(make_settings(ws_max_subscriptions=2)) as app,
        open_ws(ws_url(app), token=tokens.staff("st_1")) as ws,
    ):
        await ws.request({"type": "subscribe", "patient_id": "pt_a"}, "subscribed")
        await ws.request({"type": "subscribe", "patient_id": "pt_b"}, "subscribed")
        refused = await ws.request({"type": "subscribe", "patient_id": "pt_c"}, "error")
        assert refused["code"] == "too_many_subscriptions"


# --- resume ----------------------------------------------------------------------------


async def test_subscribe_since_replays_then_live_without_gap_or_duplicate(
    app: RunningApp, tokens: Tokens, publish: Publisher
) -> None:
    ids = [await publish("pt_r", f"ap_{n}") for n in range(3)]
    async with open_ws(ws_url(app), token=tokens.patient("pt_r")) as ws:
        subscribed = await ws.request({"type": "subscribe", "since": ids[0]}, "subscribed")
        assert subscribed["resumed"] is True
        await ws.wait_events(2)
        live = await publish("pt_r", "ap_3")
        await ws.wait_events(3)
        assert [e["id"] for e in ws.events] == [*ids[1:], live]
        assert ws.of_type("gap") == []


async def test_subscribe_since_older_than_history_sends_gap_first(
    app: RunningApp, tokens: Tokens, publish: Publisher, settings: Settings
) -> None:
    ids = [await publish("pt_g", f"ap_{n}") for n in range(4)]
    # History was trimmed past the client's last id (exactly, for the test).
    redis = app.state.broker.client  # type: ignore[attr-defined]
    await redis.xtrim(f"{settings.key_prefix}history:{{pt_g}}", maxlen=2, approximate=False)
    async with open_ws(ws_url(app), token=tokens.patient("pt_g")) as ws:
        await ws.request({"type": "subscribe", "since": ids[0]}, "subscribed")
        gap = await ws.wait_type("gap")
        await ws.wait_events(2)
        assert ws.messages.index(gap) < ws.messages.index(ws.of_type("event")[0])
        assert gap["oldest_id"] == ids[2]
        assert gap["subscription_id"].startswith("s")
        assert [e["id"] for e in ws.events] == ids[2:]


# --- commands --------------------------------------------------------------------------


async def _commands(app: RunningApp, settings: Settings) -> list[tuple[str, dict[str, str]]]:
    redis = app.state.broker.client  # type: ignore[attr-defined]
    entries = await redis.xrange(f"{settings.key_prefix}commands")
    return [
        (
            entry_id.decode() if isinstance(entry_id, bytes) else entry_id,
            {
                (k.decode() if isinstance(k, bytes) else k): (
                    v.decode() if isinstance(v, bytes) else v
                )
                for k, v in fields.items()
            },
        )
        for entry_id, fields in entries
    ]


async def test_command_lands_in_stream_with_the_tokens_subject(
    app: RunningApp, tokens: Tokens, publish: Publisher, settings: Settings
) -> None:
    await publish("pt_1", "ap_1")
    async with open_ws(ws_url(app), token=tokens.patient("pt_1")) as ws:
        accepted = await ws.request(
            {
                "type": "command",
                "action": "confirm",
                "appointment_id": "ap_1",
                # Claims of identity in the frame have no effect.
                "sub": "pt_evil",
                "patient_id": "pt_evil",
            },
            "command_accepted",
        )
    ((entry_id, fields),) = await _commands(app, settings)
    assert accepted["command_id"] == entry_id
    record = CommandRecord.from_fields(fields)
    assert record.sub == "pt_1"
    assert record.patient_id == "pt_1"
    assert record.action == "confirm"
    assert record.appointment_id == "ap_1"
    assert record.client_ref == accepted["reply_to"]
    assert record.role == "patient"


async def test_command_on_an_appointment_seen_live_is_accepted(
    app: RunningApp, tokens: Tokens, settings: Settings
) -> None:
    """A raw PUBLISH has no history entry; the event delivered on the caller's own
    channel is proof enough."""
    async with open_ws(ws_url(app), token=tokens.patient("pt_raw")) as ws:
        await ws.request({"type": "subscribe"}, "subscribed")
        await raw_publish(settings, "pt_raw", json.dumps(event("pt_raw", "ap_live")))
        await ws.wait_events(1)
        await ws.request(
            {
                "type": "command",
                "action": "request_reschedule",
                "appointment_id": "ap_live",
                "preferred_starts_at": "2026-12-02T10:00:00Z",
            },
            "command_accepted",
        )
    ((_, fields),) = await _commands(app, settings)
    assert fields["preferred_starts_at"] == "2026-12-02T10:00:00+00:00"


async def test_command_on_someone_elses_appointment_is_not_found(
    app: RunningApp, tokens: Tokens, publish: Publisher, settings: Settings
) -> None:
    await publish("pt_2", "ap_theirs")
    async with open_ws(ws_url(app), token=tokens.patient("pt_1")) as ws:
        theirs = await ws.request(
            {"type": "command", "action": "cancel", "appointment_id": "ap_theirs"}, "error"
        )
        unknown = await ws.request(
            {"type": "command", "action": "cancel", "appointment_id": "ap_nobody"}, "error"
        )
        # Indistinguishable from an appointment that does not exist.
        assert theirs["code"] == unknown["code"] == "not_found"
        assert theirs["message"] == unknown["message"]
    async with open_ws(ws_url(app), token=tokens.staff("st_1")) as staff:
        refused = await staff.request(
            {"type": "command", "action": "cancel", "appointment_id": "ap_theirs"}, "error"
        )
        assert refused["code"] == "forbidden"
    assert await _commands(app, settings) == []


async def test_commands_are_rate_limited(
    app: RunningApp, tokens: Tokens, publish: Publisher
) -> None:
    await publish("pt_1", "ap_1")
    async with open_ws(ws_url(app), token=tokens.patient("pt_1")) as ws:
        answers = [
            await ws.request(
                {"type": "command", "action": "confirm", "appointment_id": "ap_1"},
                "error" if n >= 10 else "command_accepted",
            )
            for n in range(11)
        ]
        assert answers[-1]["code"] == "rate_limited"


# --- invalid frames and limits ---------------------------------------------------------


async def test_invalid_frames_get_an_error_and_the_connection_stays_open(
    app: RunningApp, tokens: Tokens
) -> None:
    async with open_ws(ws_url(app), token=tokens.patient("pt_1")) as ws:
        await ws.send("not json")
        await ws.send({"type": "teleport", "id": "t1"})
        await ws.send({"type": "subscribe", "appointment_id": "no spaces!", "id": "s1"})
        await ws.send({"type": "command", "action": "explode", "appointment_id": "ap_1"})
        await ws.conn.send(b"\x00binary")
        await ws.wait_type("error", count=5)
        codes = [m["code"] for m in ws.of_type("error")]
        assert codes == [
            "invalid_message",
            "unsupported_type",
            "invalid_message",
            "invalid_message",
            "invalid_message",
        ]
        assert ws.of_type("error")[1]["reply_to"] == "t1"
        assert ws.of_type("error")[2]["message"] == "invalid: appointment_id"
        await ws.request({"type": "ping"}, "pong")


async def test_repeated_garbage_closes_1008(make_settings: SettingsFactory, tokens: Tokens) -> None:
    async with (
        run_app(make_settings(ws_max_invalid_messages=3)) as app,
        open_ws(ws_url(app), token=tokens.patient("pt_1")) as ws,
    ):
        for _ in range(4):
            await ws.send("garbage")
        assert await ws.wait_closed() == (1008, "too many invalid messages")
        assert len(ws.of_type("error")) == 3


async def test_oversize_frame_closes_1009(make_settings: SettingsFactory, tokens: Tokens) -> None:
    async with (
        run_app(make_settings(ws_max_message_bytes=1024)) as app,
        open_ws(ws_url(app), token=tokens.patient("pt_1")) as ws,
    ):
        await ws.request({"type": "ping", "pad": "x" * 900}, "pong")
        await ws.send({"type": "ping", "pad": "x" * 2000})
        code, _ = await ws.wait_closed()
        assert code == 1009


async def test_over_capacity_closes_1013_with_reconnect_hint(
    make_settings: SettingsFactory, tokens: Tokens
) -> None:
    async with (
        run_app(make_settings(max_connections_per_subject=1)) as app,
        open_ws(ws_url(app), token=tokens.patient("pt_1")) as first,
    ):
        await first.wait_type("authenticated")
        async with open_ws(ws_url(app), token=tokens.patient("pt_1")) as second:
            assert await second.wait_closed() == (1013, "over_capacity")
            (hint,) = second.messages
            assert hint["type"] == "reconnect"
            assert hint["reason"] == "over_capacity"
            assert hint["retry_ms"] > 0
        await first.request({"type": "ping"}, "pong")


# --- slow consumers, expiry, revocation, shutdown ----------------------------------------


async def test_stalled_reader_is_closed_4008_and_others_are_unaffected(
    make_settings: SettingsFactory, tokens: Tokens
) -> None:
    settings = make_settings(client_queue_max=4)
    async with run_app(settings) as app:
        # The stalled client reads nothing: websockets stops reading the socket once
        # its queue is full, then the kernel buffers fill, then uvicorn's.
        stalled = await connect(
            ws_url(app),
            additional_headers=bearer(tokens.patient("pt_slow")),
            proxy=None,
            max_queue=1,
            ping_interval=None,
            # Compressed, the repetitive test events would never fill a buffer.
            compression=None,
        )
        try:
            await stalled.send(json.dumps({"type": "subscribe"}))
            assert json.loads(await stalled.recv())["type"] == "authenticated"
            assert json.loads(await stalled.recv())["type"] == "subscribed"
            async with open_ws(ws_url(app), token=tokens.staff("st_watch")) as healthy:
                await healthy.request({"type": "subscribe", "patient_id": "pt_slow"}, "subscribed")
                big = json.dumps(event("pt_slow", "ap_1", blob="x" * 30_000))
                published = 0
                slow_before = _slow_consumers()
                deadline = time.monotonic() + 30
                while not _slow_closed(app):
                    assert time.monotonic() < deadline, "the stalled reader was never closed"
                    await raw_publish(settings, "pt_slow", big)
                    published += 1
                    # The healthy client keeps up while the other one stalls.
                    await healthy.wait_events(published, timeout_s=10)
                await raw_publish(settings, "pt_slow", big)
                await healthy.wait_events(published + 1, timeout_s=10)
            # Reading again, the stalled client gets what was buffered, the hint, 4008.
            frames, code = await _read_until_closed(stalled)
            assert code == 4008
            assert _slow_consumers() == slow_before + 1
            assert frames[-1]["type"] == "reconnect"
            assert frames[-1]["reason"] == "too_slow"
            assert 0 < sum(1 for f in frames if f["type"] == "event") < published
        finally:
            await stalled.close()


async def _read_until_closed(conn: ClientConnection) -> tuple[list[dict[str, Any]], int | None]:
    frames: list[dict[str, Any]] = []
    async with asyncio.timeout(30):
        try:
            while True:
                frames.append(json.loads(await conn.recv()))
        except ConnectionClosed as closed:
            return frames, closed.rcvd.code if closed.rcvd is not None else None


def _slow_consumers() -> float:
    value: float = metric("notify_slow_consumers_total", transport="ws")
    return value


def _slow_closed(app: RunningApp) -> bool:
    return any(s.close_reason is CloseReason.TOO_SLOW for s in app.state.hub.queues)


async def test_token_expiry_warns_then_closes_4001(app: RunningApp, tokens: Tokens) -> None:
    async with open_ws(ws_url(app), token=tokens.patient("pt_1", ttl_s=2)) as ws:
        await ws.request({"type": "subscribe"}, "subscribed")
        warning = await ws.wait_type("token_expiring")
        assert warning["expires_at"] <= time.time() + 2
        assert await ws.wait_closed() == (4001, "token_expired")


async def test_fresh_auth_frame_extends_the_connection(app: RunningApp, tokens: Tokens) -> None:
    async with open_ws(ws_url(app), auth_frame=tokens.patient("pt_1", ttl_s=2)) as ws:
        first = ws.of_type("authenticated")[0]
        await ws.request({"type": "subscribe"}, "subscribed")
        await ws.wait_type("token_expiring")
        renewed = await ws.request(
            {"type": "auth", "token": tokens.patient("pt_1", ttl_s=3600)}, "authenticated"
        )
        assert renewed["expires_at"] > first["expires_at"]
        other = await ws.request(
            {"type": "auth", "token": tokens.patient("pt_2", ttl_s=3600)}, "error"
        )
        assert other["code"] == "subject_mismatch"
        bad = await ws.request({"type": "auth", "token": "nope"}, "error")
        assert bad["code"] == "unauthorized"
        # Still open well past the first token's expiry.
        while time.time() < first["expires_at"] + 1.5:
            await ws.request({"type": "ping"}, "pong")
        assert not ws.closed.is_set()


async def test_revocation_closes_4003(app: RunningApp, tokens: Tokens) -> None:
    async with (
        open_ws(ws_url(app), token=tokens.patient("pt_1")) as subscribed,
        open_ws(ws_url(app), token=tokens.patient("pt_1")) as idle,
        open_ws(ws_url(app), token=tokens.patient("pt_2")) as bystander,
    ):
        await subscribed.request({"type": "subscribe"}, "subscribed")
        await idle.wait_type("authenticated")
        await bystander.wait_type("authenticated")
        closed = app.state.hub.close_where(
            lambda s: s.principal is not None and s.principal.sub == "pt_1", CloseReason.REVOKED
        )
        assert closed >= 2
        assert await subscribed.wait_closed() == (4003, "revoked")
        assert await idle.wait_closed() == (4003, "revoked")
        assert subscribed.of_type("reconnect") == []
        await bystander.request({"type": "ping"}, "pong")


async def test_drain_sends_reconnect_then_1001_within_the_window(
    app: RunningApp, tokens: Tokens, settings: Settings
) -> None:
    async with (
        open_ws(ws_url(app), token=tokens.patient("pt_1")) as subscribed,
        open_ws(ws_url(app), token=tokens.patient("pt_2")) as unsubscribed,
    ):
        await subscribed.request({"type": "subscribe"}, "subscribed")
        await unsubscribed.wait_type("authenticated")
        started = time.monotonic()
        app.state.begin_drain()
        window = settings.shutdown_grace_s * settings.shutdown_jitter_fraction
        for ws in (subscribed, unsubscribed):
            assert await ws.wait_closed(timeout_s=window + 5) == (1001, "shutdown")
            hint = ws.messages[-1]
            assert hint["type"] == "reconnect"
            assert hint["reason"] == "shutdown"
        assert time.monotonic() - started < window + 2
        assert await app.state.wait_streams_closed(5)
        # New connections while draining are told to come back elsewhere.
        async with open_ws(ws_url(app), token=tokens.patient("pt_3")) as late:
            assert await late.wait_closed() == (1001, "shutdown")


async def test_keepalive_pings_do_not_kill_a_busy_connection(
    make_settings: SettingsFactory, tokens: Tokens
) -> None:
    """uvicorn stops reading a socket until the app calls receive(): without a reader
    its pongs would go unread and the connection die of "keepalive ping timeout"."""
    settings = make_settings(ws_ping_interval_s=0.1, ws_ping_timeout_s=0.3)
    async with (
        run_app(settings) as app,
        open_ws(ws_url(app), token=tokens.patient("pt_1")) as ws,
    ):
        until = time.monotonic() + 1.5
        while time.monotonic() < until:
            await ws.request({"type": "ping"}, "pong")
            await ws.send({"type": "ack", "event_id": "1-0"})
        assert not ws.closed.is_set()


async def test_protocol_pings_keep_their_interval_from_the_hand_over(
    make_settings: SettingsFactory, tokens: Tokens
) -> None:
    """The first ping of a held WebSocket comes one `NOTIFY_WS_PING_INTERVAL_S`
    after the hand-over, not when the clock's first heartbeat slot (`heartbeat_s`,
    here almost a minute) comes up."""
    settings = make_settings(heartbeat_s=59.0, ws_ping_interval_s=0.2, ws_ping_timeout_s=20.0)
    async with run_app(settings) as app:
        peer = await WsPeer.open(app, tokens.patient("pt_pings"))
        try:
            await peer.read_until(lambda: peer.pings >= 2, "two protocol pings", timeout_s=20)
        finally:
            peer.close()


async def _wait(predicate: Any, what: str, timeout_s: float = 5.0) -> None:
    await eventually(predicate, timeout_s=timeout_s, what=what)


def test_command_in_memory_mode_lands_in_the_memory_stream(
    make_settings: SettingsFactory, tokens: Tokens
) -> None:
    """`make run` without Redis: the memory broker keeps the commands stream."""
    settings = make_settings(redis_url="memory://")
    app = create_app(settings)
    with TestClient(app) as client:
        published = client.post(
            "/v1/events", json=event("pt_m", "ap_m"), headers=bearer(tokens.service())
        )
        assert published.status_code == 201, published.text
        with client.websocket_connect("/v1/ws", headers=bearer(tokens.patient("pt_m"))) as ws:
            assert ws.receive_json()["type"] == "authenticated"
            ws.send_json(
                {"type": "command", "action": "cancel", "appointment_id": "ap_m", "id": "c1"}
            )
            accepted = ws.receive_json()
        assert accepted["type"] == "command_accepted"
        broker = app.state.notify.broker
        ((entry_id, fields),) = broker.stream_records[f"{settings.key_prefix}commands"]
        assert entry_id == accepted["command_id"]
        assert fields["sub"] == "pt_m"
        assert fields["client_ref"] == "c1"


@pytest.mark.slow
async def test_sigterm_closes_websockets_1001_staggered_not_1012(
    own_redis: RedisServer, make_settings: SettingsFactory, tokens: Tokens
) -> None:
    """uvicorn's own shutdown closes every WebSocket with 1012 at once: the drain
    must run (reconnect hint, 1001, spread over the jitter window) before it."""
    settings = make_settings(redis_url=own_redis.url, shutdown_grace_s=4.0)
    proc = ServiceProcess(settings)
    await asyncio.to_thread(proc.start)
    try:
        url = f"ws://127.0.0.1:{proc.port}/v1/ws"
        async with (
            open_ws(url, token=tokens.patient("pt_1")) as subscribed,
            open_ws(url, auth_frame=tokens.patient("pt_2")) as idle,
        ):
            await subscribed.request({"type": "subscribe"}, "subscribed")
            started = time.monotonic()
            proc.terminate()
            for ws in (subscribed, idle):
                assert await ws.wait_closed(timeout_s=10) == (1001, "shutdown")
                assert ws.messages[-1]["type"] == "reconnect"
            assert await asyncio.to_thread(proc.wait, 10) in (0, -15)
            assert time.monotonic() - started < 4.0 + 2
    finally:
        await asyncio.to_thread(proc.stop)


DOC = Path(__file__).resolve().parents[2] / "README.md"


async def test_readme_python_client_example_runs(
    app: RunningApp, tokens: Tokens, publish: Publisher, settings: Settings
) -> None:
    """The README's client example connects, subscribes and confirms."""
    text = DOC.read_text(encoding="utf-8")
    marker = "<!-- the block below is run by tests/integration/test_ws.py -->\n```python\n"
    code = text.split(marker, 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {"__name__": "readme_websocket_example"}
    exec(compile(code, str(DOC), "exec"), namespace)  # noqa: S102
    # The same client, minus any proxy configured in the environment.
    namespace["connect"] = functools.partial(connect, proxy=None)
    run = asyncio.create_task(namespace["main"](ws_url(app), tokens.patient("pt_doc")))
    channel = f"{settings.key_prefix}patient:{{pt_doc}}"
    await _wait(lambda: channel in app.state.hub.channel_names or run.done(), "subscription")
    await publish("pt_doc", "ap_doc")
    command_id = await asyncio.wait_for(run, 10)
    ((entry_id, fields),) = await _commands(app, settings)
    assert command_id == entry_id
    assert (fields["action"], fields["appointment_id"], fields["sub"]) == (
        "confirm",
        "ap_doc",
        "pt_doc",
    )
