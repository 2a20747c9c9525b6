"""RS256/ES256 verified with keys from a JWKS served by a local test server: key
rotation (`kid`), an identity-provider outage survived with the cached keys, a
cold start while the JWKS is down, and fetches that never block the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import httpx
import jwt
import pytest

from service.config import DEV_JWT_SECRET
from tests.conftest import SettingsFactory, bearer
from tests.support.app_server import RunningApp, run_app
from tests.support.jwks_server import JwksServer, SigningKey

ME = "/v1/patients/me/events"
TICKETS = "/v1/stream-tickets"


@dataclass(frozen=True)
class Keys:
    k1: SigningKey
    k2: SigningKey
    impostor: SigningKey  # an RSA key that claims to be k1
    e1: SigningKey


@pytest.fixture(scope="module")
def keys() -> Keys:
    k1 = SigningKey.rsa("k1")
    return Keys(
        k1=k1,
        k2=SigningKey.rsa("k2"),
        impostor=SigningKey.rsa("k1"),
        e1=SigningKey.ec("e1"),
    )


@pytest.fixture
def jwks(keys: Keys) -> Iterator[JwksServer]:
    server = JwksServer()
    server.publish(keys.k1, keys.e1)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def jwks_app(make_settings: SettingsFactory, jwks: JwksServer) -> AsyncIterator[RunningApp]:
    settings = make_settings(jwt_algorithms=["RS256", "ES256"], jwt_jwks_url=jwks.url)
    async with run_app(settings) as running:
        yield running


async def accepted(http: httpx.AsyncClient, token: str) -> int:
    """The status of a ticket request with `token` (201 when the token is good)."""
    return (await http.post(TICKETS, headers=bearer(token))).status_code


async def sse_status(http: httpx.AsyncClient, token: str) -> tuple[int, str]:
    async with http.stream("GET", ME, headers=bearer(token)) as response:
        if response.status_code != 200:
            return response.status_code, ""
        async for chunk in response.aiter_text():
            return 200, chunk
    return 200, ""


async def test_rs256_and_es256_verified_with_jwks_keys(
    jwks_app: RunningApp, keys: Keys, jwks: JwksServer
) -> None:
    async with httpx.AsyncClient(base_url=jwks_app.base_url, timeout=10) as http:
        assert await accepted(http, keys.k1.token()) == 201
        assert await accepted(http, keys.e1.token()) == 201
        status, first = await sse_status(http, keys.k1.token())
        assert status == 200
        assert first.startswith("retry:")
        for refused in (
            keys.impostor.token(),  # right kid, wrong key
            keys.k1.token(kid="e1"),  # an RSA signature checked against the EC key
            keys.k1.token(kid=None),  # no kid while the set holds two keys
            keys.k1.token(aud="another-service"),
            jwt.encode(
                {"sub": "pt_1", "aud": "notify", "iss": "notify-dev", "exp": 4_000_000_000},
                DEV_JWT_SECRET,
                "HS256",
            ),  # HS256 is not on this deployment's allow-list
        ):
            assert await accepted(http, refused) == 401
    # Keys are cached: one fetch at start-up served every request.
    assert jwks.fetches <= 2


async def test_key_rotation(jwks_app: RunningApp, keys: Keys, jwks: JwksServer) -> None:
    async with httpx.AsyncClient(base_url=jwks_app.base_url, timeout=10) as http:
        assert await accepted(http, keys.k1.token()) == 201
        # The identity provider rotates: k2 in, k1 out.
        jwks.publish(keys.k2)
        fetches = jwks.fetches
        # The first token naming the new kid makes the service refetch at once.
        assert await accepted(http, keys.k2.token()) == 201
        assert jwks.fetches == fetches + 1
        # The retired key is no longer trusted.
        assert await accepted(http, keys.k1.token()) == 401
        # Unknown kids do not turn into one JWKS request each.
        for _ in range(5):
            assert await accepted(http, keys.k2.token(kid="k-unknown")) == 401
        assert jwks.fetches <= fetches + 2


async def test_jwks_outage_is_survived_with_cached_keys(
    jwks_app: RunningApp, keys: Keys, jwks: JwksServer
) -> None:
    verifier_keys = jwks_app.state.verifier.jwks
    assert verifier_keys is not None
    async with httpx.AsyncClient(base_url=jwks_app.base_url, timeout=10) as http:
        assert await accepted(http, keys.k1.token()) == 201
        jwks.mode = "error"
        # The scheduled refresh fails; the cached keys stay.
        assert await verifier_keys.refresh() is False
        assert verifier_keys.last_fetch_failed
        assert await accepted(http, keys.k1.token()) == 201
        status, first = await sse_status(http, keys.k1.token())
        assert (status, first[:6]) == (200, "retry:")
        # A kid we cannot fetch now is not the client's fault: retry later, not 401.
        assert await accepted(http, keys.k2.token()) == 503
        status, body = await sse_status(http, keys.k2.token())
        assert status == 200
        assert "event: reconnect" in body
        # The provider is back, with the new key.
        jwks.mode = "ok"
        jwks.publish(keys.k1, keys.k2)
        assert await verifier_keys.refresh() is True
        assert await accepted(http, keys.k2.token()) == 201


async def test_cold_start_while_the_jwks_is_down(
    make_settings: SettingsFactory, keys: Keys, jwks: JwksServer
) -> None:
    jwks.mode = "error"
    settings = make_settings(jwt_algorithms=["RS256"], jwt_jwks_url=jwks.url)
    # The service starts anyway (its readiness does not depend on the IdP) ...
    async with (
        run_app(settings) as app,
        httpx.AsyncClient(base_url=app.base_url, timeout=10) as http,
    ):
        # ... and answers "later", never 401, until it has keys.
        assert await accepted(http, keys.k1.token()) == 503
        status, body = await sse_status(http, keys.k1.token())
        assert status == 200
        assert "event: reconnect" in body
        jwks.mode = "ok"
        assert app.state.verifier.jwks is not None
        assert await app.state.verifier.jwks.refresh() is True
        assert await accepted(http, keys.k1.token()) == 201


async def test_a_slow_jwks_never_blocks_the_event_loop(
    make_settings: SettingsFactory, keys: Keys, jwks: JwksServer
) -> None:
    """PyJWKClient is synchronous: run on the loop, a 0.8 s answer would trip the
    loop-blocking guard (0.5 s) that wraps every async test."""
    jwks.mode = "stall"
    settings = make_settings(jwt_algorithms=["RS256"], jwt_jwks_url=jwks.url)
    async with (
        run_app(settings) as app,
        httpx.AsyncClient(base_url=app.base_url, timeout=10) as http,
    ):
        # Many requests at once while the first fetch is in flight: one fetch.
        statuses = await asyncio.gather(*(accepted(http, keys.k1.token()) for _ in range(10)))
        assert statuses == [201] * 10
        assert jwks.fetches <= 2
