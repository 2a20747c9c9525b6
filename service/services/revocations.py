"""Token revocation, shared by every process through Redis.

Two kinds, each a plain string key with a TTL (the revocation's end):

    {prefix}revoked:jti:{jti}   value: Unix seconds of the revocation
        the token with this `jti` (and every ticket of it) is refused
    {prefix}revoked:sub:{sub}   value: Unix seconds of the revocation ("not before")
        every token of the subject issued at or before that instant, or without
        `iat`, is refused; tokens issued afterwards (a new login) are accepted

Writing the key refuses new requests at once, in every process. Live streams are
closed by the announcement on the control channel that follows it
(`services/control.py`), and again by `service/fanout/control.py:sweep_live_streams`
after a process' listener reconnects (an announcement sent while it was away is lost).

An identity provider can revoke without calling the API: `SET` the key with `EX`,
then `PUBLISH` the matching control message (see docs/auth.md).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Final

import structlog
from notify_publisher.keys import RedisKeys

from service.brokers.base import Broker
from service.services.batching import TickReads
from service.services.control import announce_revocation, revokes_issued_at
from service.services.errors import DomainError, UnauthorizedError
from service.services.principal import Principal

log = structlog.get_logger(__name__)

# A revocation must outlive the tokens it refuses, but not forever: Redis would
# keep every revocation of every subject. 90 days covers any sane token lifetime.
MAX_REVOCATION_S: Final = 90 * 24 * 3600
# Keys per MGET when re-checking every live stream.
SWEEP_BATCH: Final = 500


class InvalidRevocationError(DomainError):
    """A revocation whose meaning is wrong (ends in the past, too far ahead): 400."""

    code = "invalid_revocation"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.public_message = message


@dataclass(frozen=True, slots=True)
class Revocation:
    jti: str | None
    sub: str | None
    revoked_at: float
    until: float


def _revoked_at(value: str) -> float | None:
    """The revocation instant stored in a key; None (everything revoked) if unreadable."""
    try:
        at = float(value)
    except ValueError:
        return None
    return at if math.isfinite(at) else None


class RevocationStore:
    def __init__(self, *, broker: Broker, keys: RedisKeys, reader: TickReads | None = None) -> None:
        self._broker = broker
        self._keys = keys
        # Reads for connection checks: the process' coalescing reader when given
        # (one MGET per loop iteration for every connection checked in it).
        self._get_values = reader.get_values if reader is not None else broker.get_values

    async def revoke(
        self,
        *,
        jti: str | None = None,
        sub: str | None = None,
        until: float,
        now: float | None = None,
    ) -> Revocation:
        """Revoke a token (`jti`) or a subject (`sub`) until `until` (Unix seconds)."""
        if (jti is None) == (sub is None):
            raise InvalidRevocationError("give exactly one of jti and sub")
        now = time.time() if now is None else now
        ttl_s = math.ceil(until - now)
        if ttl_s <= 0:
            raise InvalidRevocationError("until must be in the future")
        if ttl_s > MAX_REVOCATION_S:
            raise InvalidRevocationError(f"until must be within {MAX_REVOCATION_S} seconds")
        if jti is not None:
            key = self._keys.revoked_jti(jti)
        else:
            assert sub is not None
            key = self._keys.revoked_sub(sub)
        value = f"{now:.3f}"
        # The key first: from here on no process accepts the token. Then the
        # announcement, which closes the live streams.
        await self._broker.set_value(key, value, ttl_s=ttl_s)
        await announce_revocation(
            self._broker, self._keys, jti=jti, sub=sub, at=None if jti else float(value)
        )
        log.info("revoked", kind="jti" if jti else "sub", subject=sub, ttl_s=ttl_s)
        return Revocation(jti=jti, sub=sub, revoked_at=float(value), until=until)

    async def is_revoked(self, principal: Principal) -> bool:
        keys = [self._keys.revoked_sub(principal.sub)]
        if principal.jti is not None:
            keys.append(self._keys.revoked_jti(principal.jti))
        # Read from Redis on every check, never from a local copy: a revocation
        # written by any process is seen by the next connection of every process.
        values = await self._get_values(*keys)
        return revokes(principal, values[0], values[1] if len(values) > 1 else None)

    async def ensure_not_revoked(self, principal: Principal) -> None:
        """`UnauthorizedError("revoked")` if the token or its subject is revoked."""
        if await self.is_revoked(principal):
            raise UnauthorizedError("revoked")


def revokes(principal: Principal, sub_value: str | None, jti_value: str | None) -> bool:
    """Whether the revocation keys' values (`sub_value`, `jti_value`) refuse `principal`."""
    if jti_value is not None:
        return True
    if sub_value is not None:
        return revokes_issued_at(_revoked_at(sub_value), principal.issued_at)
    return False
