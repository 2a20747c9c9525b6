"""Redis refusals: error replies (`-OOM …`, `-READONLY …`, `-BUSY …`) that say the
server is there but will not run the command now. Infrastructure, not a bug of the
request: retry-able. One table for every publisher: the library's
`PublishRefusedError.cause`, the service's 503 `code`, the
`notify_redis_refusals_total{cause}` label and readiness' `degraded` cause are the
same string.

redis-py turns some replies into classes of their own (`OutOfMemoryError`,
`ReadOnlyError`, `BusyLoadingError`, `ClusterDownError` …) and leaves the rest a
plain `ResponseError` whose message still starts with the reply's code (`BUSY`,
`MISCONF`, `NOREPLICAS`): both are read here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from redis.exceptions import (
    AskError,
    BusyLoadingError,
    ClusterCrossSlotError,
    ClusterDownError,
    ExecAbortError,
    MasterDownError,
    NoPermissionError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    TryAgainError,
)


@dataclass(frozen=True, slots=True)
class Refusal:
    cause: str
    # What the 503 says (no internals: the reply's text never reaches a client).
    message: str
    # Seconds a client should wait: the time such a state usually takes to clear.
    retry_after_s: int


OTHER: Final = Refusal("redis_error", "the event store refused the command", 2)

# By the reply's code (its first word). Retry-After: a failover promotes a replica
# in about a second (READONLY, MASTERDOWN, TRYAGAIN, a MOVED storm during
# resharding); a full Redis or a loading one takes an operator or a dataset load.
REFUSALS: Final[dict[str, Refusal]] = {
    refusal.cause.removeprefix("redis_").upper(): refusal
    for refusal in (
        Refusal("redis_oom", "the event store is full (Redis maxmemory)", 5),
        Refusal("redis_readonly", "the event store is read-only (failover in progress)", 1),
        Refusal("redis_noscript", "the publish script is not loaded yet", 1),
        Refusal("redis_busy", "the event store is busy running a script", 2),
        Refusal("redis_loading", "the event store is loading its dataset", 5),
        Refusal("redis_masterdown", "the event store lost its primary", 2),
        Refusal("redis_clusterdown", "the event store cluster is down", 2),
        Refusal("redis_tryagain", "the event store is moving this patient's data", 1),
        Refusal("redis_moved", "the event store is moving this patient's data", 1),
        Refusal("redis_noreplicas", "not enough event store replicas to accept writes", 2),
        Refusal("redis_misconf", "the event store refuses writes (snapshot failing)", 5),
        Refusal("redis_noperm", "the event store denies this command (ACL)", 5),
        Refusal("redis_execabort", "the event store aborted the command", 1),
        Refusal("redis_crossslot", "the event store refused keys of several slots", 2),
    )
}

# redis-py's classes, most specific first (MasterDownError is a ClusterDownError,
# MovedError an AskError); a class redis-py builds itself may carry no reply code.
_CLASSES: Final[tuple[tuple[type[RedisError], str], ...]] = (
    (OutOfMemoryError, "OOM"),
    (ReadOnlyError, "READONLY"),
    (NoScriptError, "NOSCRIPT"),
    (BusyLoadingError, "LOADING"),
    (MasterDownError, "MASTERDOWN"),
    (ClusterDownError, "CLUSTERDOWN"),
    (TryAgainError, "TRYAGAIN"),
    (AskError, "MOVED"),
    (NoPermissionError, "NOPERM"),
    (ExecAbortError, "EXECABORT"),
    (ClusterCrossSlotError, "CROSSSLOT"),
)


def refusal_for(exc: RedisError) -> Refusal:
    """The refusal an error reply names; `OTHER` for a code not listed."""
    for cls, code in _CLASSES:
        if isinstance(exc, cls):
            return REFUSALS[code]
    code = exc.status_code or str(exc).partition(" ")[0]
    if code == "ASK":
        code = "MOVED"
    return REFUSALS.get(code, OTHER)
