"""The verifier's caches. The verified-claims cache (issue 15): a reconnect skips the
signature check, and nothing the full verification would refuse is ever answered
from it. The header cache (issue 23): tokens of one issuer parse their common
header once, and no token whose header, payload or signature differs from a
verified one is ever accepted through it."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest

from service.services import tokens
from service.services.errors import UnauthorizedError
from service.services.principal import Principal, Role
from service.services.tokens import (
    HeaderCache,
    JoseHeader,
    TokenConfig,
    TokenVerifier,
    VerifiedClaimsCache,
    mint_token,
)

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


def token(ttl_s: int = 3600, sub: str = "pt_1", **extra: object) -> str:
    return mint_token(
        secret=SECRET, sub=sub, audience="notify", issuer="notify-dev", ttl_s=ttl_s, extra=extra
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


# --- the header cache ---------------------------------------------------------


@pytest.fixture
def header_parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tokens whose header the verifier parsed (a cache miss each)."""
    parsed: list[str] = []
    parse = tokens.parse_header

    def counting(raw: str) -> JoseHeader:
        parsed.append(raw)
        return parse(raw)

    monkeypatch.setattr(tokens, "parse_header", counting)
    return parsed


def segments(raw: str) -> list[str]:
    return raw.split(".")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def test_tokens_of_one_header_parse_it_once_and_keep_their_own_claims(
    header_parses: list[str],
) -> None:
    verifier = TokenVerifier(config())
    first, second = token(sub="pt_1"), token(sub="pt_2")
    assert segments(first)[0] == segments(second)[0]
    assert (await verifier.verify(first)).sub == "pt_1"
    assert (await verifier.verify(second)).sub == "pt_2"
    assert header_parses == [first]
    assert len(verifier.headers) == 1


async def test_a_cached_header_never_lets_a_changed_payload_or_signature_through(
    header_parses: list[str],
) -> None:
    verifier = TokenVerifier(config())
    valid = token(sub="pt_1")
    await verifier.verify(valid)
    header, payload, signature = segments(valid)
    other = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    other["sub"] = "pt_2"
    forgeries = [
        # Another patient's claims under the valid token's header and signature.
        f"{header}.{b64(json.dumps(other).encode())}.{signature}",
        # The valid header and payload, another signature.
        f"{header}.{payload}.{b64(b'x' * 32)}",
        # The same header, signed with another secret.
        mint_token(secret="x" * 40, sub="pt_2", audience="notify", issuer="notify-dev"),
        # No signature at all.
        f"{header}.{payload}.",
    ]
    for forged in forgeries:
        assert segments(forged)[0] == header
        with pytest.raises(UnauthorizedError):
            await verifier.verify(forged)
    # Every forgery was answered with the cached header (no parse) and refused
    # by the full signature check.
    assert header_parses == [valid]
    assert len(verifier.cache) == 1


@pytest.mark.parametrize(
    ("header", "key", "reason"),
    [
        ({"alg": "HS512"}, "k" * 64, "algorithm"),
        ({"alg": "none"}, "", "algorithm"),
        ({"alg": "HS256", "kid": "other"}, "x" * 40, "invalid"),
        ({"alg": ["HS256"]}, SECRET, "algorithm"),
    ],
)
async def test_a_header_unlike_the_cached_one_is_parsed_and_checked(
    header_parses: list[str], header: dict[str, object], key: str, reason: str
) -> None:
    verifier = TokenVerifier(config())
    await verifier.verify(token())
    alg = header["alg"]
    claims = jwt.decode(token(), SECRET, algorithms=["HS256"], audience="notify")
    if isinstance(alg, str):
        raw = jwt.encode(claims, key, algorithm=alg, headers=header)
    else:
        # A header PyJWT would not write: built by hand, signed like HS256.
        valid = segments(token())
        raw = f"{b64(json.dumps(header).encode())}.{valid[1]}.{valid[2]}"
    assert segments(raw)[0] != segments(token())[0]
    with pytest.raises(UnauthorizedError) as refused:
        await verifier.verify(raw)
    assert refused.value.reason == reason
    assert header_parses[-1] == raw
    # Refused tokens' headers are not remembered.
    assert len(verifier.headers) == 1


async def test_only_verified_tokens_headers_are_remembered() -> None:
    verifier = TokenVerifier(config())
    forged = jwt.encode(
        {"sub": "pt_1", "aud": "notify", "iss": "notify-dev", "exp": time.time() + 60},
        "x" * 40,
        algorithm="HS256",
        headers={"kid": "made-up"},
    )
    with pytest.raises(UnauthorizedError):
        await verifier.verify(forged)
    assert len(verifier.headers) == 0


def test_the_header_cache_is_bounded_oldest_first() -> None:
    cache = HeaderCache(2)
    for i in range(3):
        cache.put(f"h{i}", JoseHeader(alg="HS256", kid=str(i)))
    assert len(cache) == 2
    assert cache.get("h0") is None
    assert cache.get("h2") == JoseHeader(alg="HS256", kid="2")
