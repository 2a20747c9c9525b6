"""Issue 15's shortcuts under a storm: the verified-claims cache and the reads
coalesced per loop iteration never let through what the plain path refuses.

Hundreds of connects race at once, valid ones mixed with a revoked token, a
token of a revoked subject, a deleted ticket and an expired token (each of those
verified once before, so the claims cache holds it): every valid one streams,
every other one gets the ordinary 401, and the reads really were shared."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt

from tests.conftest import SettingsFactory, Tokens, bearer
from tests.support.app_server import run_app
from tests.support.waiting import eventually

ME = "/v1/patients/me/events"
UNAUTHORIZED = {"detail": "unauthorized", "code": "unauthorized"}
VALID = 150
EACH_REFUSED = 40


def jti_of(token: str) -> str:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return str(claims["jti"])


def in_an_hour() -> str:
    return (datetime.now(UTC) + timedelta(hours=1)).isoformat()


async def status_of(http: httpx.AsyncClient, url: str, headers: dict[str, str]) -> int:
    async with http.stream("GET", url, headers=headers) as response:
        if response.status_code == 401:
            await response.aread()
            assert response.json() == UNAUTHORIZED
        return response.status_code


async def test_a_storm_refuses_revoked_deleted_and_expired_credentials(
    make_settings: SettingsFactory, tokens: Tokens
) -> None:
    # No leeway: a token is expired from its `exp` on, as the cache's entries are.
    settings = make_settings(jwt_leeway_s=0, max_connections_per_subject=1000)
    async with (
        run_app(settings) as app,
        httpx.AsyncClient(
            base_url=app.base_url, timeout=30, limits=httpx.Limits(max_connections=1000)
        ) as http,
    ):
        admin = bearer(tokens.admin())
        revoked_jti = [tokens.patient(f"pt_j{i}") for i in range(EACH_REFUSED)]
        revoked_sub = [tokens.patient(f"pt_s{i}") for i in range(EACH_REFUSED)]
        ticket_owners = [tokens.patient(f"pt_t{i}") for i in range(EACH_REFUSED)]
        valid = [tokens.patient(f"pt_v{i}") for i in range(VALID)]

        # Each doomed credential works once first: its claims are now cached.
        tickets = []
        for owner in ticket_owners:
            response = await http.post("/v1/stream-tickets", headers=bearer(owner))
            assert response.status_code == 201
            tickets.append(response.json()["ticket"])
        expiring = [tokens.patient(f"pt_e{i}", ttl_s=8) for i in range(EACH_REFUSED)]
        firsts = await asyncio.gather(
            *(status_of(http, ME, bearer(t)) for t in revoked_jti + revoked_sub + expiring),
            *(status_of(http, f"{ME}?ticket={t}", {}) for t in tickets),
        )
        assert [i for i, s in enumerate(firsts) if s != 200] == []
        assert len(app.state.verifier.cache) >= 3 * EACH_REFUSED

        for t in revoked_jti:
            response = await http.post(
                "/v1/revocations", json={"jti": jti_of(t), "until": in_an_hour()}, headers=admin
            )
            assert response.status_code == 201
        for i in range(EACH_REFUSED):
            response = await http.post(
                "/v1/revocations", json={"sub": f"pt_s{i}", "until": in_an_hour()}, headers=admin
            )
            assert response.status_code == 201
        for owner, ticket in zip(ticket_owners, tickets, strict=True):
            response = await http.delete(f"/v1/stream-tickets/{ticket}", headers=bearer(owner))
            assert response.status_code == 204
        expires_at = max(
            float(jwt.decode(t, options={"verify_signature": False})["exp"]) for t in expiring
        )
        await eventually(lambda: time.time() > expires_at, timeout_s=15, what="tokens expired")

        batched_before = app.state.reads.largest_batch
        requests = (
            [(ME, bearer(t), 200) for t in valid]
            + [(ME, bearer(t), 401) for t in revoked_jti + revoked_sub + expiring]
            + [(f"{ME}?ticket={t}", {}, 401) for t in tickets]
        )
        statuses = await asyncio.gather(*(status_of(http, url, h) for url, h, _ in requests))
        wrong = [
            (url.split("?")[0], want, got)
            for (url, _, want), got in zip(requests, statuses, strict=True)
            if want != got
        ]
        assert wrong == []
        # The storm's checks really shared their round trips (else this test would
        # prove nothing about the coalesced path).
        assert max(batched_before, app.state.reads.largest_batch) > 1
        assert app.state.reads.largest_batch > 1
