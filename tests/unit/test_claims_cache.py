"""The verified-claims cache (issue 15): a reconnect skips the signature check, and
nothing the full verification would refuse is ever answered from it."""

from __future__ import annotations

import time

import pytest

from service.services.errors import UnauthorizedError
from service.services.principal import Principal, Role
from service.services.tokens import TokenConfig, TokenVerifier, VerifiedClaimsCache, mint_token

SECRET = "s" * 40


def config(**overrides: object) -> TokenConfig:
    values: dict[str, object] = {
        "algorithms": ("HS256",),
        "audience": "notify",
        "issuer": "notify-dev",
        "leeway_s": 0,
        "hmac_secret": SECRET,
        "public_key": None,
    }
    values.update(overrides)
    return TokenConfig(**values)  # type: ignore[arg-type]


def token(ttl_s: int = 3600, **extra: object) -> str:
    return mint_token(
        secret=SECRET, sub="pt_1", audience="notify", issuer="notify-dev", ttl_s=ttl_s, extra=extra
    )


def principal(expires_at: float) -> Principal:
    return Principal(sub="pt_1", role=Role.PATIENT, expires_at=expires_at)


async def test_a_verified_token_is_answered_from_the_cache() -> None:
    verifier = TokenVerifier(config())
    raw = token()
    first = await verifier.verify(raw)
    assert len(verifier.cache) == 1
    assert await verifier.verify(raw) is first


async def test_a_refused_token_is_never_cached() -> None:
    verifier = TokenVerifier(config())
    forged = mint_token(secret="x" * 40, sub="pt_1", audience="notify", issuer="notify-dev")
    for _ in range(2):
        with pytest.raises(UnauthorizedError):
            await verifier.verify(forged)
    assert len(verifier.cache) == 0


async def test_an_entry_ends_with_its_token_and_full_verification_decides() -> None:
    now = [time.time()]
    verifier = TokenVerifier(config())
    verifier.cache = VerifiedClaimsCache(10, clock=lambda: now[0])
    raw = token(ttl_s=3600)
    cached = await verifier.verify(raw)
    # Past the token's `exp` the cache no longer answers: the entry is dropped and
    # the token verified again (here, by the real clock, still valid).
    now[0] = cached.expires_at
    assert verifier.cache.get(VerifiedClaimsCache.key(raw)) is None
    assert len(verifier.cache) == 0


async def test_an_expired_token_is_refused_even_after_a_cached_success() -> None:
    verifier = TokenVerifier(config())
    key = VerifiedClaimsCache.key(raw := token(ttl_s=-5))
    # As if it had been verified while still valid and had expired since.
    verifier.cache._entries[key] = principal(time.time() - 5)
    with pytest.raises(UnauthorizedError) as refused:
        await verifier.verify(raw)
    assert refused.value.reason == "expired"


def test_the_cache_is_bounded_oldest_first() -> None:
    cache = VerifiedClaimsCache(2)
    keys = [VerifiedClaimsCache.key(str(i)) for i in range(3)]
    for k in keys:
        cache.put(k, principal(time.time() + 60))
    assert len(cache) == 2
    assert cache.get(keys[0]) is None
    assert cache.get(keys[2]) is not None


def test_a_new_key_set_empties_the_cache() -> None:
    cache = VerifiedClaimsCache(10)
    k = VerifiedClaimsCache.key("t")
    cache.put(k, principal(time.time() + 60), version=0)
    assert cache.get(k, version=1) is None
    # A verification that began under the old key set is not remembered.
    cache.put(k, principal(time.time() + 60), version=0)
    assert cache.get(k, version=1) is None


async def test_size_zero_turns_it_off() -> None:
    verifier = TokenVerifier(config(claims_cache_size=0))
    await verifier.verify(token())
    assert len(verifier.cache) == 0
