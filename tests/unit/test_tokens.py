"""The token verifier on its own: static PEM keys (RS256, ES256) bound to their
algorithm family, the JWKS key set's cache (single flight, staleness, outage,
rotation rate limit), and the production key settings."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from pydantic import ValidationError

from service.config import Settings
from service.services.errors import UnauthorizedError
from service.services.tokens import (
    JWKS_FORCED_REFRESH_S,
    JWKS_RETRY_S,
    JwksKeySet,
    KeysUnavailableError,
    TokenConfig,
    TokenVerifier,
)
from tests.support.jwks_server import SigningKey

STRONG = "s" * 40


@pytest.fixture(scope="module")
def rsa_key() -> SigningKey:
    return SigningKey.rsa("r1")


@pytest.fixture(scope="module")
def ec_key() -> SigningKey:
    return SigningKey.ec("e1")


def pem(key: SigningKey) -> str:
    return (
        key.private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def verifier(algorithms: tuple[str, ...], public_key: str | None = None) -> TokenVerifier:
    return TokenVerifier(
        TokenConfig(
            algorithms=algorithms,
            audience="notify",
            issuer="notify-dev",
            leeway_s=5,
            hmac_secret=None,
            public_key=public_key,
        )
    )


async def test_static_pem_keys_verify_their_own_family_only(
    rsa_key: SigningKey, ec_key: SigningKey
) -> None:
    rs = verifier(("RS256", "ES256"), pem(rsa_key))
    principal = await rs.verify(rsa_key.token("pt_7", role="staff", scope="a b"))
    assert (principal.sub, principal.role.value, principal.scopes) == (
        "pt_7",
        "staff",
        frozenset({"a", "b"}),
    )
    assert principal.issued_at is not None
    # An ES256 header in front of an RSA key: refused before any crypto, not a 500.
    with pytest.raises(UnauthorizedError):
        await rs.verify(ec_key.token())

    es = verifier(("ES256",), pem(ec_key))
    assert (await es.verify(ec_key.token())).sub == "pt_1"
    with pytest.raises(UnauthorizedError):
        await es.verify(rsa_key.token())


def test_escaped_newlines_in_a_pem_from_the_environment_are_accepted(rsa_key: SigningKey) -> None:
    one_line = pem(rsa_key).replace("\n", "\\n")
    verifier(("RS256",), one_line)


def test_bad_pem_fails_at_construction() -> None:
    with pytest.raises(ValueError, match="PEM"):
        verifier(("RS256",), "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----")


class FakeIdP:
    """A JWKS fetch function (called in a worker thread) and a controllable clock."""

    def __init__(self, *keys: SigningKey) -> None:
        self.document: dict[str, Any] = {"keys": [k.jwk() for k in keys]}
        self.calls = 0
        self.fail = False
        self.gate: threading.Event | None = None
        self.now = 1000.0

    def fetch(self) -> dict[str, Any]:
        self.calls += 1
        if self.gate is not None:
            self.gate.wait(5)
        if self.fail:
            raise OSError("connection refused")
        return self.document

    def clock(self) -> float:
        return self.now

    def key_set(self, cache_s: float = 300) -> JwksKeySet:
        return JwksKeySet(
            "https://idp.example/jwks", cache_s=cache_s, fetch=self.fetch, clock=self.clock
        )


async def test_concurrent_cold_lookups_share_one_fetch(rsa_key: SigningKey) -> None:
    idp = FakeIdP(rsa_key)
    idp.gate = threading.Event()
    key_set = idp.key_set()
    lookups = [asyncio.create_task(key_set.key_for("r1", "RS256")) for _ in range(20)]
    await asyncio.sleep(0)
    idp.gate.set()
    results = await asyncio.gather(*lookups)
    assert idp.calls == 1
    assert all(r is results[0] for r in results)


async def test_stale_keys_refresh_and_an_outage_keeps_them(rsa_key: SigningKey) -> None:
    idp = FakeIdP(rsa_key)
    key_set = idp.key_set(cache_s=60)
    await key_set.key_for("r1", "RS256")
    assert idp.calls == 1
    idp.now += 30
    await key_set.key_for("r1", "RS256")
    assert idp.calls == 1  # still fresh
    idp.now += 31
    idp.fail = True
    # Stale, the refetch fails: the cached key still verifies.
    assert await key_set.key_for("r1", "RS256") is not None
    assert idp.calls == 2
    assert key_set.last_fetch_failed
    # No refetch on every request during the outage: one per retry interval.
    await key_set.key_for("r1", "RS256")
    assert idp.calls == 2
    idp.now += JWKS_RETRY_S
    idp.fail = False
    await key_set.key_for("r1", "RS256")
    assert idp.calls == 3
    assert not key_set.last_fetch_failed


async def test_unknown_kid_forces_a_rate_limited_refetch(
    rsa_key: SigningKey, ec_key: SigningKey
) -> None:
    idp = FakeIdP(rsa_key)
    key_set = idp.key_set()
    await key_set.key_for("r1", "RS256")
    idp.document = {"keys": [rsa_key.jwk(), ec_key.jwk()]}
    idp.now += 1
    # Rotation: the new kid triggers a refetch and is found.
    await key_set.key_for("e1", "ES256")
    assert idp.calls == 2
    # Unknown kids right after: no refetch, just 401.
    for _ in range(3):
        with pytest.raises(UnauthorizedError):
            await key_set.key_for("nope", "RS256")
    assert idp.calls == 2
    idp.now += JWKS_FORCED_REFRESH_S
    with pytest.raises(UnauthorizedError):
        await key_set.key_for("nope", "RS256")
    assert idp.calls == 3


async def test_key_algorithm_must_match(rsa_key: SigningKey, ec_key: SigningKey) -> None:
    idp = FakeIdP(rsa_key, ec_key)
    idp.document["keys"].append({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"})
    key_set = idp.key_set()
    with pytest.raises(UnauthorizedError):
        await key_set.key_for("r1", "RS384")  # the JWK pins RS256
    with pytest.raises(UnauthorizedError):
        await key_set.key_for("e1", "ES384")  # a P-256 key
    with pytest.raises(UnauthorizedError):
        await key_set.key_for("hmac", "RS256")  # symmetric keys are never taken
    assert key_set.key_ids == {"r1", "e1"}


async def test_no_key_and_no_idp_is_unavailable_not_unauthorized(rsa_key: SigningKey) -> None:
    idp = FakeIdP(rsa_key)
    idp.fail = True
    with pytest.raises(KeysUnavailableError):
        await idp.key_set().key_for("r1", "RS256")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"jwt_algorithms": "RS256"}, "NOTIFY_JWT_PUBLIC_KEY or NOTIFY_JWT_JWKS_URL"),
        (
            {"jwt_algorithms": "HS256,RS256", "jwt_jwks_url": "https://idp.example/jwks"},
            "NOTIFY_JWT_SECRET is required",
        ),
        (
            {"jwt_algorithms": "RS256", "jwt_jwks_url": "http://idp.example/jwks"},
            "https://",
        ),
        ({"jwt_algorithms": "RS256", "jwt_public_key": "not a key"}, "NOTIFY_JWT_PUBLIC_KEY"),
    ],
)
def test_production_key_settings_are_checked_at_start_up(
    values: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(_env_file=None, env="production", redis_url="redis://r:6379/0", **values)


def test_public_key_must_fit_the_allowed_algorithms(
    rsa_key: SigningKey, ec_key: SigningKey
) -> None:
    with pytest.raises(ValidationError, match="cannot verify"):
        Settings(_env_file=None, jwt_algorithms="ES256", jwt_public_key=pem(rsa_key))
    with pytest.raises(ValidationError, match="not both"):
        Settings(
            _env_file=None,
            jwt_algorithms="RS256",
            jwt_public_key=pem(rsa_key),
            jwt_jwks_url="https://idp.example/jwks",
        )
    production = Settings(
        _env_file=None,
        env="production",
        redis_url="redis://r:6379/0",
        jwt_algorithms="ES256",
        jwt_public_key=pem(ec_key),
    )
    assert production.jwt_hmac_secret() is None
