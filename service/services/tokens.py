"""JWT verification: an explicit algorithm allow-list, required claims, leeway.

Every failure a client can cause becomes one `UnauthorizedError`; the response
body never tells a bad signature from an expired token.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import jwt

from service.schemas.events import is_opaque_id
from service.services.errors import UnauthorizedError
from service.services.principal import Principal, Role

# Claims every token must carry (PyJWT checks `exp` only when asked to).
REQUIRED_CLAIMS = ["exp", "sub", "aud", "iss"]
# Tokens are small; a multi-kilobyte header is an attack, not a token.
MAX_TOKEN_LENGTH = 8192


@dataclass(frozen=True, slots=True)
class TokenConfig:
    algorithms: tuple[str, ...]
    audience: str
    issuer: str
    leeway_s: int
    hmac_secret: str | None
    public_key: str | None


class TokenVerifier:
    """Verifies bearer tokens with a static key (HMAC secret or PEM public key)."""

    def __init__(self, config: TokenConfig) -> None:
        self._config = config

    def _key_for(self, token: str) -> Any:
        header = jwt.get_unverified_header(token)
        alg = header.get("alg")
        if alg not in self._config.algorithms:
            raise UnauthorizedError("algorithm")
        if alg.startswith("HS"):
            if self._config.hmac_secret is None:
                raise UnauthorizedError("algorithm")
            return self._config.hmac_secret
        if self._config.public_key is None:
            raise UnauthorizedError("algorithm")
        return self._config.public_key

    async def verify(self, token: str) -> Principal:
        """The principal of a valid token; `UnauthorizedError` for anything else."""
        return self.verify_sync(token)

    def verify_sync(self, token: str) -> Principal:
        if not token or len(token) > MAX_TOKEN_LENGTH:
            raise UnauthorizedError("malformed")
        try:
            key = self._key_for(token)
            claims = jwt.decode(
                token,
                key,
                algorithms=list(self._config.algorithms),
                audience=self._config.audience,
                issuer=self._config.issuer,
                leeway=self._config.leeway_s,
                options={"require": REQUIRED_CLAIMS},
            )
        except jwt.ExpiredSignatureError as exc:
            raise UnauthorizedError("expired") from exc
        except jwt.InvalidTokenError as exc:
            raise UnauthorizedError("invalid") from exc
        return principal_from_claims(claims)


def principal_from_claims(claims: dict[str, Any]) -> Principal:
    sub = claims.get("sub")
    if not isinstance(sub, str) or not is_opaque_id(sub):
        raise UnauthorizedError("claims")
    try:
        role = Role(claims.get("role", Role.PATIENT.value))
    except ValueError as exc:
        raise UnauthorizedError("claims") from exc
    scope_claim = claims.get("scope", "")
    if not isinstance(scope_claim, str):
        raise UnauthorizedError("claims")
    jti = claims.get("jti")
    if jti is not None and not isinstance(jti, str):
        raise UnauthorizedError("claims")
    return Principal(
        sub=sub,
        role=role,
        scopes=frozenset(scope_claim.split()),
        jti=jti,
        expires_at=float(claims["exp"]),
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
) -> str:
    """A signed development token (the `notify token` command and tests)."""
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
    return jwt.encode(claims, secret, algorithm=algorithm)
