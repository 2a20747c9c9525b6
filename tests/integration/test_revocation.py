"""Revocation reaches every process: a revoked `jti` or subject closes the live SSE
streams and WebSockets held by *another* `notify serve` process within 1 s, new
requests get the ordinary 401, and nobody else is touched. Also: an identity
provider revoking straight through Redis, and a revocation announced while a
process' listener was away."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import redis.asyncio as aioredis

from service.config import Settings
from service.services.tickets import ticket_id
from tests.conftest import SettingsFactory, Tokens, bearer
from tests.support.app_server import RunningApp, ServiceProcess, run_app
from tests.support.events import event_dict
from tests.support.raw_redis import async_client
from tests.support.redis_server import RedisServer
from tests.support.sse import SSEStream, open_sse, opened
from tests.support.ws import WSClient, open_ws

ME = "/v1/patients/me/events"
UNAUTHORIZED = {"detail": "unauthorized", "code": "unauthorized"}
# The contract: every process closes the affected streams within this.
WITHIN_S = 1.0


def jti_of(token: str) -> str:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return str(claims["jti"])


def in_an_hour() -> str:
    return (datetime.now(UTC) + timedelta(hours=1)).isoformat()


@contextlib.asynccontextmanager
async def other_process(settings: Settings) -> AsyncIterator[ServiceProcess]:
    proc = ServiceProcess(settings)
    await asyncio.to_thread(proc.start)
    try:
        yield proc
    finally:
        await asyncio.to_thread(proc.stop)


async def ticket_for(http: httpx.AsyncClient, base_url: str, token: str) -> str:
    response = await http.post(f"{base_url}/v1/stream-tickets", headers=bearer(token))
    assert response.status_code == 201, response.text
    ticket: str = response.json()["ticket"]
    return ticket


async def all_closed_within(
    streams: list[SSEStream], sockets: list[WSClient], timeout_s: float
) -> float:
    """Seconds until every stream ended and every socket closed (fails past timeout)."""
    started = time.monotonic()
    await asyncio.gather(
        *(s.wait_ended(timeout_s=timeout_s) for s in streams),
        *(w.wait_closed(timeout_s=timeout_s) for w in sockets),
    )
    return time.monotonic() - started


async def assert_still_live(
    http: httpx.AsyncClient, app: RunningApp, tokens: Tokens, streams: list[SSEStream], patient: str
) -> None:
    published = await http.post(
        f"{app.base_url}/v1/events", json=event_dict(patient), headers=bearer(tokens.service())
    )
    assert published.status_code == 201
    for stream in streams:
        frames = await stream.wait_events(1)
        assert frames[-1].id == published.json()["id"]


async def test_revoked_jti_closes_its_streams_in_another_process_within_1s(
    app: RunningApp, settings: Settings, tokens: Tokens
) -> None:
    doomed_token = tokens.patient("pt_1")
    other_token = tokens.patient("pt_1")  # same subject, another token
    async with other_process(settings) as holder, httpx.AsyncClient(timeout=10) as http:
        ticket = await ticket_for(http, holder.base_url, doomed_token)
        ws_url = f"{holder.base_url.replace('http://', 'ws://')}/v1/ws"
        async with (
            open_sse(http, f"{holder.base_url}{ME}", headers=bearer(doomed_token)) as by_bearer,
            open_sse(http, f"{holder.base_url}{ME}?ticket={ticket}") as by_ticket,
            open_sse(http, f"{holder.base_url}{ME}", headers=bearer(other_token)) as bystander,
            open_ws(ws_url, token=doomed_token) as ws_bearer,
            open_ws(f"{ws_url}?ticket={ticket}") as ws_ticket,
            open_ws(ws_url, auth_frame=doomed_token) as ws_auth_frame,
            open_ws(ws_url, token=other_token) as ws_bystander,
        ):
            for stream in (by_bearer, by_ticket, bystander):
                await opened(stream)
            for ws in (ws_bearer, ws_ticket, ws_auth_frame, ws_bystander):
                await ws.request({"type": "subscribe"}, "subscribed")

            # Revoked through the *other* process (the in-process app).
            response = await http.post(
                f"{app.base_url}/v1/revocations",
                json={"jti": jti_of(doomed_token), "until": in_an_hour()},
                headers=bearer(tokens.admin()),
            )
            assert response.status_code == 201, response.text
            assert response.json()["jti"] == jti_of(doomed_token)
            elapsed = await all_closed_within(
                [by_bearer, by_ticket], [ws_bearer, ws_ticket, ws_auth_frame], WITHIN_S
            )
            assert elapsed < WITHIN_S
            for stream in (by_bearer, by_ticket):
                assert stream.events[-1].event == "closed"
                assert stream.events[-1].json() == {"reason": "revoked"}
            for ws in (ws_bearer, ws_ticket, ws_auth_frame):
                assert ws.close_code == 4003
            # Another token of the same subject is untouched.
            await assert_still_live(http, app, tokens, [bystander], "pt_1")
            assert not ws_bystander.closed.is_set()

        # New requests with the revoked token: the same 401 as any bad token, everywhere.
        for response in (
            await http.get(f"{holder.base_url}{ME}", headers=bearer(doomed_token)),
            await http.get(f"{app.base_url}{ME}?ticket={ticket}"),
            await http.post(f"{app.base_url}/v1/stream-tickets", headers=bearer(doomed_token)),
        ):
            assert response.status_code == 401
            assert response.json() == UNAUTHORIZED


async def test_revoked_subject_closes_all_its_streams_in_another_process_within_1s(
    app: RunningApp, settings: Settings, tokens: Tokens
) -> None:
    first, second = tokens.patient("pt_1"), tokens.patient("pt_1")
    neighbour = tokens.patient("pt_2")
    async with other_process(settings) as holder, httpx.AsyncClient(timeout=10) as http:
        ticket = await ticket_for(http, holder.base_url, second)
        ws_url = f"{holder.base_url.replace('http://', 'ws://')}/v1/ws"
        async with (
            open_sse(http, f"{holder.base_url}{ME}", headers=bearer(first)) as one,
            open_sse(http, f"{holder.base_url}{ME}?ticket={ticket}") as two,
            open_sse(http, f"{holder.base_url}{ME}", headers=bearer(neighbour)) as untouched,
            open_ws(ws_url, token=first) as ws_one,
            open_ws(f"{ws_url}?ticket={ticket}") as ws_two,
        ):
            for stream in (one, two, untouched):
                await opened(stream)
            for ws in (ws_one, ws_two):
                await ws.request({"type": "subscribe"}, "subscribed")
            response = await http.post(
                f"{app.base_url}/v1/revocations",
                json={"sub": "pt_1", "until": in_an_hour()},
                headers=bearer(tokens.admin()),
            )
            assert response.status_code == 201, response.text
            elapsed = await all_closed_within([one, two], [ws_one, ws_two], WITHIN_S)
            assert elapsed < WITHIN_S
            assert {ws_one.close_code, ws_two.close_code} == {4003}
            await assert_still_live(http, app, tokens, [untouched], "pt_2")

        for token in (first, second):
            refused = await http.get(f"{holder.base_url}{ME}", headers=bearer(token))
            assert refused.status_code == 401
            assert refused.json() == UNAUTHORIZED
        # "Log out everywhere", not a ban: a token issued after the revocation works.
        fresh = tokens.patient("pt_1", iat=int(time.time()) + 2)
        async with open_sse(http, f"{holder.base_url}{ME}", headers=bearer(fresh)) as again:
            await opened(again)


async def test_revocation_rules(app: RunningApp, tokens: Tokens) -> None:
    async with httpx.AsyncClient(base_url=app.base_url, timeout=10) as http:
        body = {"sub": "pt_1", "until": in_an_hour()}
        for token, status in (
            (tokens.patient("pt_1"), 403),
            (tokens.service(), 403),
            ("garbage", 401),
        ):
            response = await http.post("/v1/revocations", json=body, headers=bearer(token))
            assert response.status_code == status
        admin = bearer(tokens.admin())
        past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
        for bad_shape in (
            {"until": in_an_hour()},
            {"sub": "pt_1", "jti": "x", "until": in_an_hour()},
            {"sub": "pt_1"},
            {"sub": "pt_1", "until": "2026-01-01T00:00:00"},  # no time zone
            {"sub": "not an id", "until": in_an_hour()},
            {"sub": "pt_1", "until": 4102444800},  # a number is never a time
            {"sub": "pt_1", "until": "4102444800"},
            {"sub": 1, "until": in_an_hour()},
        ):
            response = await http.post("/v1/revocations", json=bad_shape, headers=admin)
            assert response.status_code == 422, bad_shape
        response = await http.post(
            "/v1/revocations", json={"sub": "pt_1", "until": past}, headers=admin
        )
        assert response.status_code == 400


async def test_identity_provider_revokes_through_redis_directly(
    app: RunningApp, settings: Settings, tokens: Tokens
) -> None:
    """What docs/auth.md tells an identity provider to do, done with a bare client."""
    by_jti, by_sub = tokens.patient("pt_1"), tokens.patient("pt_3")
    prefix = settings.key_prefix
    redis = async_client(settings)
    try:
        async with (
            httpx.AsyncClient(base_url=app.base_url, timeout=10) as http,
            open_sse(http, ME, headers=bearer(by_jti)) as first,
            open_sse(http, ME, headers=bearer(by_sub)) as second,
        ):
            await opened(first)
            await opened(second)
            now = time.time()
            await redis.set(f"{prefix}revoked:jti:{jti_of(by_jti)}", f"{now:.3f}", ex=3600)
            await redis.publish(
                f"{prefix}control", json.dumps({"type": "revoked", "jti": jti_of(by_jti)})
            )
            await redis.set(f"{prefix}revoked:sub:pt_3", f"{now:.3f}", ex=3600)
            await redis.publish(
                f"{prefix}control", json.dumps({"type": "revoked", "sub": "pt_3", "at": now})
            )
            await all_closed_within([first, second], [], WITHIN_S)
            for token in (by_jti, by_sub):
                refused = await http.get(ME, headers=bearer(token))
                assert refused.status_code == 401
    finally:
        await redis.aclose()


async def test_revocation_missed_while_the_listener_was_away_is_applied_on_reconnect(
    own_redis: RedisServer, make_settings: SettingsFactory, tokens: Tokens
) -> None:
    """An announcement published while a process' pub/sub connection is down is
    lost; the process re-checks its live streams once it is back."""
    settings = make_settings(redis_url=own_redis.url)
    revoked, deleted_ticket_owner = tokens.patient("pt_1"), tokens.patient("pt_2")
    redis = aioredis.from_url(own_redis.url)
    try:
        async with (
            run_app(settings) as app,
            httpx.AsyncClient(base_url=app.base_url, timeout=10) as http,
        ):
            ticket = await ticket_for(http, app.base_url, deleted_ticket_owner)
            async with (
                open_sse(http, ME, headers=bearer(revoked)) as by_token,
                open_sse(http, f"{ME}?ticket={ticket}") as by_ticket,
                open_sse(http, ME, headers=bearer(tokens.patient("pt_4"))) as bystander,
            ):
                for stream in (by_token, by_ticket, bystander):
                    await opened(stream)
                # The state changes in Redis, but no announcement reaches the process.
                prefix = settings.key_prefix
                await redis.set(
                    f"{prefix}revoked:jti:{jti_of(revoked)}", f"{time.time():.3f}", ex=600
                )
                await redis.delete(f"{prefix}ticket:{ticket_id(ticket)}")
                # Drop the listener's connection: it reconnects, backfills, re-checks.
                await redis.client_kill_filter(_type="pubsub")
                await by_token.wait_ended(timeout_s=10)
                await by_ticket.wait_ended(timeout_s=10)
                assert by_token.events[-1].json() == {"reason": "revoked"}
                assert by_ticket.events[-1].json() == {"reason": "ticket_deleted"}
                assert not bystander.ended.is_set()
    finally:
        await redis.aclose()
