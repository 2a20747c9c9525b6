"""Stream tickets against the real app and a real Redis: issue, redeem (again and
again, as EventSource does), scope, deletion, expiry, and what a ticket cannot do."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest

from service.services.principal import Role
from service.services.tickets import ticket_id
from tests.conftest import SettingsFactory, Tokens, bearer
from tests.support.app_server import RunningApp, run_app
from tests.support.events import event_dict
from tests.support.publishing import publish_one
from tests.support.redis_server import RedisServer
from tests.support.sse import open_sse, opened

ME = "/v1/patients/me/events"
TICKETS = "/v1/stream-tickets"
UNAUTHORIZED = {"detail": "unauthorized", "code": "unauthorized"}


async def issue(http: httpx.AsyncClient, token: str) -> str:
    response = await http.post(TICKETS, headers=bearer(token))
    assert response.status_code == 201, response.text
    ticket: str = response.json()["ticket"]
    return ticket


async def test_issue_returns_an_opaque_ticket_bound_to_the_token(
    app: RunningApp, tokens: Tokens
) -> None:
    token = tokens.patient("pt_1", ttl_s=600)
    async with httpx.AsyncClient(base_url=app.base_url, timeout=10) as http:
        response = await http.post(TICKETS, headers=bearer(token))
    assert response.status_code == 201
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {"ticket", "expires_at"}
    ticket = body["ticket"]
    # 256 random bits, URL-safe, and not the token.
    assert len(ticket) == 43
    assert ticket not in token
    expires_at = datetime.fromisoformat(body["expires_at"]).timestamp()
    assert expires_at == pytest.approx(time.time() + 600, abs=5)

    # Redis holds the ticket's hash only, and none of the token.
    redis = app.state.broker.client  # type: ignore[attr-defined]
    # SCAN, which visits every shard in Cluster (KEYS asks one node).
    names = [k.decode() async for k in redis.scan_iter(match=f"{app.state.keys.prefix}ticket:*")]
    assert names == [app.state.keys.ticket(ticket_id(ticket))]
    stored = (await redis.get(names[0])).decode()
    assert ticket not in stored
    assert token.split(".")[2] not in stored
    assert 590 <= await redis.ttl(names[0]) <= 600


async def test_ticket_opens_the_subjects_stream_and_survives_reconnects(
    app: RunningApp, tokens: Tokens
) -> None:
    async with httpx.AsyncClient(base_url=app.base_url, timeout=10) as http:
        ticket = await issue(http, tokens.patient("pt_1"))
        # A `patient_id` in the query is never trusted: the ticket's subject decides.
        url = f"{ME}?ticket={ticket}&patient_id=pt_2"
        async with open_sse(http, url) as first:
            await opened(first)
            first_id = await publish_one(app, "pt_1")
            await publish_one(app, "pt_2")
            (frame,) = await first.wait_events(1)
            assert frame.id == first_id
            assert frame.json()["patient_id"] == "pt_1"
        missed = await publish_one(app, "pt_1")
        # EventSource reconnects to the same URL with Last-Event-ID: same ticket.
        async with open_sse(http, url, headers={"Last-Event-ID": first_id}) as second:
            await opened(second)
            (replayed,) = await second.wait_events(1)
            assert replayed.id == missed
        # And a third time, as often as the browser needs.
        async with open_sse(http, url) as third:
            await opened(third)


async def test_ticket_keeps_role_staff_may_name_a_patient(app: RunningApp, tokens: Tokens) -> None:
    async with httpx.AsyncClient(base_url=app.base_url, timeout=10) as http:
        staff_ticket = await issue(http, tokens.staff("st_1"))
        async with open_sse(http, f"/v1/patients/pt_9/events?ticket={staff_ticket}") as stream:
            await opened(stream)
            event_id = await publish_one(app, "pt_9")
            (frame,) = await stream.wait_events(1)
            assert frame.id == event_id
        patient_ticket = await issue(http, tokens.patient("pt_1"))
        other = await http.get(f"/v1/patients/pt_2/events?ticket={patient_ticket}")
        assert other.status_code == 404


@pytest.mark.parametrize("role", ["service", "admin"])
async def test_roles_without_streams_get_no_ticket(
    app: RunningApp, tokens: Tokens, role: str
) -> None:
    token = tokens.service() if role == "service" else tokens.admin()
    async with httpx.AsyncClient(base_url=app.base_url, timeout=10) as http:
        response = await http.post(TICKETS, headers=bearer(token))
    assert response.status_code == 403


async def test_unknown_garbage_or_doubled_tickets_are_401(app: RunningApp, tokens: Tokens) -> None:
    async with httpx.AsyncClient(base_url=app.base_url, timeout=10) as http:
        real = await issue(http, tokens.patient("pt_1"))
        for query in (
            "ticket=" + "A" * 43,  # well-formed, never issued
            "ticket=not-a-ticket",
            "ticket=",
            "ticket=" + real[:-1],
            f"ticket={real}&ticket={real}",
        ):
            response = await http.get(f"{ME}?{query}")
            assert response.status_code == 401, query
            assert response.json() == UNAUTHORIZED
        # A ticket and a bearer token together: ambiguous, refused.
        both = await http.get(f"{ME}?ticket={real}", headers=bearer(tokens.patient("pt_1")))
        assert both.status_code == 401


async def test_ticket_cannot_call_any_other_endpoint(app: RunningApp, tokens: Tokens) -> None:
    async with httpx.AsyncClient(base_url=app.base_url, timeout=10) as http:
        # Even a ticket issued for a token that holds every scope.
        mighty = tokens.make(
            "st_1", role=Role.STAFF, scopes=("events:publish", "revocations:write")
        )
        ticket = await issue(http, mighty)
        until = {"until": "2099-01-01T00:00:00Z"}
        calls: list[tuple[str, str, dict[str, Any] | None]] = [
            ("POST", "/v1/events", event_dict("pt_1")),
            ("POST", TICKETS, None),
            ("DELETE", f"{TICKETS}/{ticket}", None),
            ("POST", "/v1/revocations", {"sub": "pt_1", **until}),
        ]
        for method, path, body in calls:
            as_query = await http.request(method, f"{path}?ticket={ticket}", json=body)
            assert as_query.status_code == 401, (method, path)
            assert as_query.json() == UNAUTHORIZED
            as_bearer = await http.request(method, path, json=body, headers=bearer(ticket))
            assert as_bearer.status_code == 401, (method, path)
            assert as_bearer.json() == UNAUTHORIZED
        # The ticket itself still works for what it is for.
        async with open_sse(http, f"/v1/patients/pt_1/events?ticket={ticket}") as stream:
            await opened(stream)


async def test_delete_ends_the_streams_opened_with_the_ticket(
    app: RunningApp, tokens: Tokens
) -> None:
    token = tokens.patient("pt_1")
    async with httpx.AsyncClient(base_url=app.base_url, timeout=10) as http:
        ticket = await issue(http, token)
        kept = await issue(http, token)
        async with (
            open_sse(http, f"{ME}?ticket={ticket}") as doomed,
            open_sse(http, f"{ME}?ticket={kept}") as survivor,
            open_sse(http, ME, headers=bearer(token)) as with_bearer,
        ):
            for stream in (doomed, survivor, with_bearer):
                await opened(stream)
            # Somebody else cannot delete it (and cannot tell it exists).
            foreign = await http.delete(
                f"{TICKETS}/{ticket}", headers=bearer(tokens.patient("pt_2"))
            )
            assert foreign.status_code == 404
            response = await http.delete(f"{TICKETS}/{ticket}", headers=bearer(token))
            assert response.status_code == 204
            await doomed.wait_ended(timeout_s=2)
            closed = [f for f in doomed.events if f.event == "closed"]
            assert closed
            assert closed[-1].json() == {"reason": "ticket_deleted"}
            # Streams of another ticket or of the bearer token go on.
            event_id = await publish_one(app, "pt_1")
            for stream in (survivor, with_bearer):
                (frame,) = await stream.wait_events(1)
                assert frame.id == event_id
        gone = await http.get(f"{ME}?ticket={ticket}")
        assert gone.status_code == 401
        assert gone.json() == UNAUTHORIZED
        again = await http.delete(f"{TICKETS}/{ticket}", headers=bearer(token))
        assert again.status_code == 404


async def test_ticket_and_its_streams_die_with_the_token(app: RunningApp, tokens: Tokens) -> None:
    short_lived = tokens.patient("pt_1", ttl_s=2)
    async with httpx.AsyncClient(base_url=app.base_url, timeout=10) as http:
        ticket = await issue(http, short_lived)
        async with (
            open_sse(http, f"{ME}?ticket={ticket}") as by_ticket,
            open_sse(http, ME, headers=bearer(short_lived)) as by_bearer,
        ):
            for stream in (by_ticket, by_bearer):
                await opened(stream)
            for stream in (by_ticket, by_bearer):
                await stream.wait_for(
                    lambda s: any(f.event == "token_expiring" for f in s.events),
                    timeout_s=5,
                    what="token_expiring",
                )
                await stream.wait_ended(timeout_s=5)
                assert stream.events[-1].event == "closed"
                assert stream.events[-1].json() == {"reason": "token_expired"}

        async def refused() -> bool:
            return (await http.get(f"{ME}?ticket={ticket}")).status_code == 401

        # The token is past its `exp` now: the browser's reconnect gets a 401.
        assert await refused()


async def test_revoked_token_gets_no_ticket_and_its_tickets_stop_working(
    app: RunningApp, tokens: Tokens
) -> None:
    token = tokens.patient("pt_1")
    jti = _claims(token)["jti"]
    async with httpx.AsyncClient(base_url=app.base_url, timeout=10) as http:
        ticket = await issue(http, token)
        revoked = await http.post(
            "/v1/revocations",
            json={"jti": jti, "until": "2099-01-01T00:00:00Z"},
            headers=bearer(tokens.admin()),
        )
        assert revoked.status_code == 400  # too far ahead: a business rule, not a shape
        revoked = await http.post(
            "/v1/revocations",
            json={"jti": jti, "until": _in(3600)},
            headers=bearer(tokens.admin()),
        )
        assert revoked.status_code == 201, revoked.text
        for response in (
            await http.post(TICKETS, headers=bearer(token)),
            await http.get(f"{ME}?ticket={ticket}"),
            await http.get(ME, headers=bearer(token)),
        ):
            assert response.status_code == 401
            assert response.json() == UNAUTHORIZED


async def test_sse_with_ticket_while_redis_is_down_is_the_retryable_answer(
    own_redis: RedisServer, make_settings: SettingsFactory, tokens: Tokens
) -> None:
    settings = make_settings(redis_url=own_redis.url, redis_pool_timeout_s=0.5)
    async with (
        run_app(settings) as app,
        httpx.AsyncClient(base_url=app.base_url, timeout=10) as http,
    ):
        ticket = await issue(http, tokens.patient("pt_1"))
        await asyncio.to_thread(own_redis.stop, kill=True)
        response = await http.get(f"{ME}?ticket={ticket}")
        # Not a 401 (the page would throw the ticket away) nor a 503 (EventSource
        # would give up for good): 200, `retry:` and `event: reconnect`.
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert "event: reconnect" in response.text
        assert "retry: " in response.text
        # A bearer token needs the revocation list, too: same answer on SSE routes.
        with_bearer = await http.get(ME, headers=bearer(tokens.patient("pt_1")))
        assert with_bearer.status_code == 200
        assert "event: reconnect" in with_bearer.text
        # Elsewhere it is the ordinary 503.
        refused = await http.post(TICKETS, headers=bearer(tokens.patient("pt_1")))
        assert refused.status_code == 503
        assert "retry-after" in refused.headers


def _claims(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


def _in(seconds: int) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()
