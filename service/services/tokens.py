"""JWT verification: an explicit algorithm allow-list, required claims, leeway.

Every failure a client can cause becomes one `UnauthorizedError`; the response
body never tells a bad signature from an expired token. Failures the client
cannot cause (the JWKS endpoint is down and no key is cached) are
`KeysUnavailableError`, a 503 / retry-later, never a 401 that makes a browser give up.

Keys: an HMAC secret (development), a PEM public key, or a JWKS URL. Each
algorithm is only ever checked against a key of its own family, so an `HS256`
token signed with the RSA public key (key confusion) or an `ES256` header in front
of an RSA key is refused before any cryptography runs.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

import jwt
import structlog
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from notify_publisher.events import is_opaque_id

from service.keys import PublicKey, algorithms_for_key, load_public_key
from service.services.errors import UnauthorizedError, UnavailableError
from service.services.principal import Principal, Role, scope_set

log = structlog.get_logger(__name__)

# Claims every token must carry (PyJWT checks `exp` only when asked to).
REQUIRED_CLAIMS = ["exp", "sub", "aud", "iss"]
# Tokens are small; a multi-kilobyte header is an attack, not a token.
MAX_TOKEN_LENGTH = 8192
# A JOSE header holds `alg`, `typ` and `kid`: a few dozen bytes. Anything near this
# (embedded keys, certificate chains, padding) is refused before it is decoded.
MAX_HEADER_SEGMENT = 1024

HMAC_ALGORITHMS: Final = frozenset({"HS256", "HS384", "HS512"})

# A JWKS fetch that takes longer than this counts as an outage.
JWKS_FETCH_TIMEOUT_S: Final = 5.0
# After a failed fetch, the next attempt waits this long (cached keys serve meanwhile).
JWKS_RETRY_S: Final = 5.0
# A token naming an unknown `kid` may force a refetch (a key rotation) at most this
# often, so random `kid`s cannot turn every request into a request to the IdP.
JWKS_FORCED_REFRESH_S: Final = 5.0
# Distinct JOSE headers remembered (`HeaderCache`): one issuer signs every token
# with the same header, a key rotation adds one `kid`; a few dozen is plenty.
HEADER_CACHE_SIZE: Final = 64


class KeysUnavailableError(UnavailableError):
    """No verification key could be obtained (JWKS unreachable, nothing cached)."""

    code = "keys_unavailable"


@dataclass(frozen=True, slots=True)
class TokenConfig:
    algorithms: tuple[str, ...]
    audience: str
    issuer: str
    leeway_s: int
    hmac_secret: str | None
    public_key: str | None
    jwks_url: str | None = None
    # How long fetched JWKS keys are trusted before a refresh is due.
    jwks_cache_s: float = 300.0
    # Verified tokens remembered (by hash) so that a reconnect skips the signature
    # check; 0 turns the cache off. About 0.3 KB each.
    claims_cache_size: int = 10_000


@dataclass(frozen=True, slots=True)
class _JwksKey:
    key: PublicKey
    # The JWK's own `alg`, when it pins one.
    alg: str | None


JwksFetcher = Callable[[], dict[str, Any]]


class JwksKeySet:
    """Keys of a JWKS endpoint, cached, refreshed off the event loop, outage-proof.

    - PyJWKClient is synchronous (urllib): every fetch runs in a worker thread.
    - `run_refresher` (supervised by the lifespan) refetches every `cache_s`, so
      requests normally never wait for the identity provider.
    - A fetch that fails keeps the keys we have: an IdP outage does not log
      everybody out. Only with no key at all is it a `KeysUnavailableError`.
    - An unknown `kid` forces one refetch (key rotation), rate-limited.
    - Concurrent callers share one fetch.
    """

    def __init__(
        self,
        url: str,
        *,
        cache_s: float,
        fetch: JwksFetcher | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self._cache_s = cache_s
        self._clock = clock
        if fetch is None:
            client = jwt.PyJWKClient(url, cache_jwk_set=False, timeout=JWKS_FETCH_TIMEOUT_S)
            fetch = client.fetch_data
        self._fetch = fetch
        self._keys: dict[str | None, _JwksKey] = {}
        self._lock = asyncio.Lock()
        self._generation = 0
        # Changes whenever the set of keys changes: claims verified with a key
        # that may since have been withdrawn are verified again.
        self.keys_version = 0
        self.fetched_at: float | None = None
        self.last_fetch_failed = False
        self._retry_at = float("-inf")
        self._forced_at = float("-inf")

    @property
    def key_ids(self) -> frozenset[str | None]:
        return frozenset(self._keys)

    async def refresh(self) -> bool:
        """Fetch the key set now; True when it worked. Joins a fetch in flight."""
        generation = self._generation
        async with self._lock:
            if self._generation != generation:
                return not self.last_fetch_failed
            try:
                document = await asyncio.to_thread(self._fetch)
                keys = _parse_jwks(document)
            except Exception as exc:  # any failure is an outage: keep what we have
                self.last_fetch_failed = True
                self._retry_at = self._clock() + JWKS_RETRY_S
                log.warning(
                    "jwks_refresh_failed",
                    error=type(exc).__name__,
                    cached_keys=len(self._keys),
                )
                return False
            finally:
                self._generation += 1
            changed = set(keys) != set(self._keys)
            if keys != self._keys:
                self.keys_version += 1
            self._keys = keys
            self.fetched_at = self._clock()
            self.last_fetch_failed = False
            if changed:
                log.info("jwks_keys_loaded", keys=len(keys))
            return True

    async def run_refresher(self) -> None:
        """Keep the keys fresh for as long as the process runs."""
        while True:
            ok = await self.refresh()
            await asyncio.sleep(self._cache_s if ok else JWKS_RETRY_S)

    def _due(self) -> bool:
        now = self._clock()
        if now < self._retry_at:
            return False
        return self.fetched_at is None or now - self.fetched_at >= self._cache_s

    async def key_for(self, kid: str | None, alg: str) -> PublicKey:
        """The key that must have signed a token with this `kid` and `alg`."""
        refreshed = False
        if self._due():
            await self.refresh()
            refreshed = True
        found = self._find(kid)
        if (
            found is None
            and not refreshed
            and self._clock() - self._forced_at >= JWKS_FORCED_REFRESH_S
        ):
            self._forced_at = self._clock()
            await self.refresh()
            found = self._find(kid)
        if found is None:
            if not self._keys or self.last_fetch_failed:
                # Maybe a rotated key we cannot fetch right now: retry later, not 401.
                raise KeysUnavailableError("jwks")
            raise UnauthorizedError("key")
        if (found.alg is not None and found.alg != alg) or alg not in algorithms_for_key(found.key):
            raise UnauthorizedError("algorithm")
        return found.key

    def _find(self, kid: str | None) -> _JwksKey | None:
        if kid is None:
            # No `kid`: unambiguous only when the set holds a single key.
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)


def _parse_jwks(document: Any) -> dict[str | None, _JwksKey]:
    """Signature keys (RSA/EC) of a JWKS document; symmetric keys are never taken."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWKS document")
    keys: dict[str | None, _JwksKey] = {}
    for entry in document["keys"]:
        if not isinstance(entry, dict) or entry.get("kty") not in ("RSA", "EC"):
            continue
        if entry.get("use") not in (None, "sig"):
            continue
        try:
            jwk = jwt.PyJWK(entry)
        except jwt.PyJWTError:
            continue
        key = jwk.key
        if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
            continue
        alg = entry.get("alg")
        keys[jwk.key_id] = _JwksKey(key=key, alg=alg if isinstance(alg, str) else None)
    if not keys:
        raise ValueError("the JWKS holds no usable signature key")
    return keys


class VerifiedClaimsCache:
    """Principals of tokens that passed verification, keyed by the token's SHA-256.

    Only what `jwt.decode` would answer again is remembered: a token is verified
    in full the first time (signature, `aud`, `iss`, required claims, `nbf`), and
    its entry ends at the token's own `exp` (no leeway; after it the token goes
    through full verification, which applies the leeway). Bounded: the oldest
    entry goes first. It replaces the signature check only, never the revocation
    or ticket check, which still read Redis for every connection. With a JWKS, a
    change of the key set empties it (a withdrawn key stops verifying at once).
    """

    __slots__ = ("_clock", "_entries", "_max", "_version")

    def __init__(self, max_entries: int, *, clock: Callable[[], float] = time.time) -> None:
        self._max = max_entries
        self._clock = clock
        self._entries: dict[bytes, Principal] = {}
        self._version = 0

    @staticmethod
    def key(token: str) -> bytes:
        return hashlib.sha256(token.encode()).digest()

    def get(self, key: bytes, *, version: int = 0) -> Principal | None:
        if version != self._version:
            self._entries.clear()
            self._version = version
            return None
        principal = self._entries.get(key)
        if principal is None:
            return None
        if self._clock() >= principal.expires_at:
            del self._entries[key]
            return None
        return principal

    def put(self, key: bytes, principal: Principal, *, version: int = 0) -> None:
        if self._max <= 0 or principal.expires_at <= self._clock():
            return
        if version != self._version:
            # Verified with a key set that has changed since: not remembered.
            return
        if len(self._entries) >= self._max:
            # Dicts keep insertion order: the first key is the oldest entry.
            del self._entries[next(iter(self._entries))]
        self._entries[key] = principal

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(frozen=True, slots=True)
class JoseHeader:
    """What the verifier reads from a token's header: its `alg` and `kid`, as the
    JSON held them (not yet checked)."""

    alg: object
    kid: object


class HeaderCache:
    """Parsed headers of tokens that passed verification, keyed by the header
    segment itself (the exact base64url text, compared in full by the dict).

    All tokens of one issuer and key carry the same header, and PyJWT's
    `get_unverified_header` decodes and checks all three segments (~30 µs): a
    connect spent that before the signature check. What is cached is a pure
    function of the segment's text, so a hit answers exactly what parsing would;
    it only picks the key and the algorithm: `jwt.decode` still parses the whole
    token, checks the header's `alg` against the one picked and verifies the
    signature over header and payload. Only headers of verified tokens are
    remembered, so made-up headers cannot push the issuer's out; bounded, the
    oldest first."""

    __slots__ = ("_entries", "_max")

    def __init__(self, max_entries: int = HEADER_CACHE_SIZE) -> None:
        self._max = max_entries
        self._entries: dict[str, JoseHeader] = {}

    def get(self, segment: str) -> JoseHeader | None:
        return self._entries.get(segment)

    def put(self, segment: str, header: JoseHeader) -> None:
        if self._max <= 0 or segment in self._entries:
            return
        if len(self._entries) >= self._max:
            del self._entries[next(iter(self._entries))]
        self._entries[segment] = header

    def __len__(self) -> int:
        return len(self._entries)


def parse_header(token: str) -> JoseHeader:
    """The header of `token` by PyJWT's own parser (`jwt.InvalidTokenError` if bad)."""
    header = jwt.get_unverified_header(token)
    return JoseHeader(alg=header.get("alg"), kid=header.get("kid"))


class TokenVerifier:
    """Verifies bearer tokens with an HMAC secret, a PEM public key or a JWKS."""

    def __init__(self, config: TokenConfig, *, jwks: JwksKeySet | None = None) -> None:
        self._config = config
        self._algorithms = frozenset(config.algorithms)
        # Parsed once: a bad PEM crashes the start-up, not a request.
        self._public_key = load_public_key(config.public_key) if config.public_key else None
        self._public_algorithms = (
            algorithms_for_key(self._public_key) if self._public_key is not None else frozenset()
        )
        if jwks is None and config.jwks_url:
            jwks = JwksKeySet(config.jwks_url, cache_s=config.jwks_cache_s)
        self.jwks = jwks
        self.cache = VerifiedClaimsCache(config.claims_cache_size)
        self.headers = HeaderCache()

    async def _key_for(self, header: JoseHeader) -> tuple[str, Any]:
        alg = header.alg
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise UnauthorizedError("algorithm")
        if alg in HMAC_ALGORITHMS:
            if self._config.hmac_secret is None:
                raise UnauthorizedError("algorithm")
            return alg, self._config.hmac_secret
        if self._public_key is not None:
            if alg not in self._public_algorithms:
                raise UnauthorizedError("algorithm")
            return alg, self._public_key
        if self.jwks is not None:
            kid = header.kid
            return alg, await self.jwks.key_for(kid if isinstance(kid, str) else None, alg)
        raise UnauthorizedError("algorithm")

    async def verify(self, token: str) -> Principal:
        """The principal of a valid token; `UnauthorizedError` for anything else."""
        if not token or len(token) > MAX_TOKEN_LENGTH:
            raise UnauthorizedError("malformed")
        segment = token.partition(".")[0]
        if len(segment) > MAX_HEADER_SEGMENT:
            raise UnauthorizedError("malformed")
        cache_key = VerifiedClaimsCache.key(token)
        version = self.jwks.keys_version if self.jwks is not None else 0
        cached = self.cache.get(cache_key, version=version)
        if cached is not None:
            return cached
        header = self.headers.get(segment)
        try:
            parsed = header or parse_header(token)
        except jwt.InvalidTokenError as exc:
            raise UnauthorizedError("invalid") from exc
        alg, key = await self._key_for(parsed)
        principal = self._decode(token, alg, key)
        if header is None:
            self.headers.put(segment, parsed)
        # The version read before the key: a refresh meanwhile empties the cache.
        self.cache.put(cache_key, principal, version=version)
        return principal

    def _decode(self, token: str, alg: str, key: Any) -> Principal:
        try:
            claims = jwt.decode(
                token,
                key,
                # Only the algorithm the key was chosen for: never let the header
                # pick another one for the same key.
                algorithms=[alg],
                audience=self._config.audience,
                issuer=self._config.issuer,
                leeway=self._config.leeway_s,
                options={"require": REQUIRED_CLAIMS},
            )
        except jwt.ExpiredSignatureError as exc:
            raise UnauthorizedError("expired") from exc
        except (jwt.InvalidTokenError, jwt.InvalidKeyError) as exc:
            raise UnauthorizedError("invalid") from exc
        return principal_from_claims(claims)


def principal_from_claims(claims: dict[str, Any]) -> Principal:
    sub = claims.get("sub")
    if not isinstance(sub, str) or not is_opaque_id(sub):
        raise UnauthorizedError("claims")
    try:
        role = Role(claims.get("role", Role.PATIENT.value))
    except (ValueError, TypeError) as exc:
        raise UnauthorizedError("claims") from exc
    scope_claim = claims.get("scope", "")
    if not isinstance(scope_claim, str):
        raise UnauthorizedError("claims")
    jti = claims.get("jti")
    if jti is not None and (not isinstance(jti, str) or not 0 < len(jti) <= 256):
        raise UnauthorizedError("claims")
    iat = claims.get("iat")
    return Principal(
        sub=sub,
        role=role,
        scopes=scope_set(scope_claim.split()),
        jti=jti,
        expires_at=float(claims["exp"]),
        issued_at=float(iat) if isinstance(iat, int | float) else None,
    )


def mint_token(
    *,
    secret: str,
    sub: str,
    audience: str,
    issuer: str,
    role: Role = Role.PATIENT,
    scopes: Iterable[str] = (),
    ttl_s: int = 3600,
    algorithm: str = "HS256",
    extra: dict[str, Any] | None = None,
    headers: dict[str, Any] | None = None,
) -> str:
    """A signed development token (the `notify token` command and tests).

    `secret` is the HMAC secret, or a PEM private key for RS*/ES* algorithms."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": sub,
        "role": role.value,
        "aud": audience,
        "iss": issuer,
        "iat": now,
        "exp": now + ttl_s,
        "jti": uuid.uuid4().hex,
    }
    scope = " ".join(scopes)
    if scope:
        claims["scope"] = scope
    claims.update(extra or {})
    return jwt.encode(claims, secret, algorithm=algorithm, headers=headers)
