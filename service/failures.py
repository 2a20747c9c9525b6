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


class BrokerTopologyError(Exception):
    """The Redis found is not of the configured kind (a Cluster node reached in
    standalone mode, a replica, a Sentinel): a configuration error that stops the
    process at start-up with one line saying what to change. Never a 500 later."""
