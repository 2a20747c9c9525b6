"""The error bases every layer may raise, from the brokers up: no dependency on
the domain or the web framework. `service/services/errors.py` builds the domain's
errors on them; `service/errors.py` maps them to HTTP."""

from __future__ import annotations


class DomainError(Exception):
    """Base of every error the domain raises on purpose."""

    code = "error"
    public_message = "error"


class UnavailableError(DomainError):
    """Infrastructure, not a bug: retry later (HTTP 503 with Retry-After)."""

    code = "unavailable"
    public_message = "temporarily unavailable"
    retry_after_s = 2


class BrokerUnavailableError(UnavailableError):
    code = "broker_unavailable"


class BrokerRefusedError(UnavailableError):
    """Redis answered with an error reply (full, read-only, loading, busy …): up
    but refusing, retry-able, and safe to retry (a refused command did nothing).
    `cause` names the reply (`redis_oom`, `redis_readonly` …, see
    `service/brokers/refusals.py`) and is the response's `code`."""

    def __init__(self, operation: str, *, cause: str, message: str, retry_after_s: int) -> None:
        super().__init__(operation, cause)
        self.operation = operation
        self.cause = cause
        self.code = cause
        self.public_message = message
        self.retry_after_s = retry_after_s


class BrokerTopologyError(Exception):
    """The Redis found is not of the configured kind (a Cluster node reached in
    standalone mode, a replica, a Sentinel): a configuration error that stops the
    process at start-up with one line saying what to change. Never a 500 later."""
