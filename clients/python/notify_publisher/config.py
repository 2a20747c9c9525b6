"""Where and how a publisher publishes: built from a Redis URL, or from the same
`NOTIFY_*` environment variables as the service (so a backend and the service
cannot disagree on the key prefix, the history bounds or the topology)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from notify_publisher.errors import ConfigurationError
from notify_publisher.keys import DEFAULT_PREFIX, RedisKeys
from notify_publisher.topology import RedisMode, RedisTopology, parse_address

T = TypeVar("T")

# Defaults shared with the service's settings (README, configuration table).
HISTORY_MAXLEN = 1000
HISTORY_TTL_S = 7 * 24 * 3600
# How long an idempotency key is remembered: a caller's retry within it never
# stores twice (the IETF draft suggests at least 24 hours).
IDEMPOTENCY_TTL_S = 24 * 3600
# WAIT's timeout for a durable publish (0 would block forever).
PUBLISH_WAIT_TIMEOUT_MS = 1000


@dataclass(frozen=True, slots=True)
class PublisherConfig:
    """Everything a publisher needs; `from_url` and `from_env` build it."""

    topology: RedisTopology
    key_prefix: str = DEFAULT_PREFIX
    history_maxlen: int = HISTORY_MAXLEN
    history_ttl_s: int = HISTORY_TTL_S
    idempotency_ttl_s: int = IDEMPOTENCY_TTL_S
    # Durable publishing: replicas that must confirm every publish (0: none).
    wait_replicas: int = 0
    wait_timeout_ms: int = PUBLISH_WAIT_TIMEOUT_MS
    max_connections: int = 20
    pool_timeout_s: float = 2.0
    socket_timeout_s: float = 5.0
    # Attempts after the first on a lost connection or a timeout (same key).
    retries: int = 3
    keys: RedisKeys = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", RedisKeys(self.key_prefix))
        checks: list[tuple[bool, str]] = [
            (self.history_maxlen >= 1, "NOTIFY_HISTORY_MAXLEN must be at least 1"),
            (self.history_ttl_s >= 1, "NOTIFY_HISTORY_TTL_S must be at least 1"),
            (self.idempotency_ttl_s >= 1, "NOTIFY_IDEMPOTENCY_TTL_S must be at least 1"),
            (self.wait_replicas >= 0, "NOTIFY_PUBLISH_WAIT_REPLICAS must be 0 or more"),
            (
                self.wait_timeout_ms >= 1,
                "NOTIFY_PUBLISH_WAIT_TIMEOUT_MS must be at least 1 (WAIT 0 blocks forever)",
            ),
            (
                self.wait_timeout_ms < self.socket_timeout_s * 1000,
                "NOTIFY_PUBLISH_WAIT_TIMEOUT_MS must stay under NOTIFY_REDIS_SOCKET_TIMEOUT_S "
                "(the connection would time out while WAIT still waits)",
            ),
            (self.max_connections >= 1, "NOTIFY_REDIS_MAX_CONNECTIONS must be at least 1"),
            (self.retries >= 0, "retries must be 0 or more"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigurationError(message)
        check_topology(self.topology)

    @classmethod
    def from_url(cls, url: str | None, **options: object) -> PublisherConfig:
        """A standalone Redis (`redis://`, `rediss://`, `unix://`)."""
        if not url:
            raise ConfigurationError("no Redis URL: pass one, or set NOTIFY_REDIS_URL")
        return cls(topology=RedisTopology(mode=RedisMode.STANDALONE, url=url), **options)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> PublisherConfig:
        """From `NOTIFY_REDIS_*` and the other `NOTIFY_*` variables the service reads."""
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(f"NOTIFY_{name}")
            return value.strip() if value is not None and value.strip() else None

        def number(name: str, kind: Callable[[str], T], default: T) -> T:
            value = get(name)
            if value is None:
                return default
            try:
                return kind(value)
            except ValueError:
                raise ConfigurationError(f"NOTIFY_{name} must be a number, not {value!r}") from None

        mode_text = (get("REDIS_MODE") or "standalone").lower()
        try:
            mode = RedisMode(mode_text)
        except ValueError:
            raise ConfigurationError(
                f"NOTIFY_REDIS_MODE must be standalone, sentinel or cluster, not {mode_text!r}"
            ) from None
        csv = {
            RedisMode.CLUSTER: ("REDIS_CLUSTER_NODES", 6379),
            RedisMode.SENTINEL: ("REDIS_SENTINELS", 26379),
        }
        nodes: list[tuple[str, int]] = []
        if mode in csv:
            name, port = csv[mode]
            for item in (get(name) or "").split(","):
                if item.strip():
                    try:
                        nodes.append(parse_address(item, default_port=port))
                    except ValueError as exc:
                        raise ConfigurationError(f"NOTIFY_{name}: {exc}") from None
        topology = RedisTopology(
            mode=mode,
            url=get("REDIS_URL"),
            nodes=tuple(nodes),
            sentinel_master=get("REDIS_SENTINEL_MASTER"),
            username=get("REDIS_USERNAME"),
            password=get("REDIS_PASSWORD"),
            sentinel_username=get("REDIS_SENTINEL_USERNAME"),
            sentinel_password=get("REDIS_SENTINEL_PASSWORD"),
            tls=(get("REDIS_TLS") or "false").lower() in ("1", "true", "yes", "on"),
        )
        return cls(
            topology=topology,
            key_prefix=get("KEY_PREFIX") or DEFAULT_PREFIX,
            history_maxlen=number("HISTORY_MAXLEN", int, HISTORY_MAXLEN),
            history_ttl_s=number("HISTORY_TTL_S", int, HISTORY_TTL_S),
            idempotency_ttl_s=number("IDEMPOTENCY_TTL_S", int, IDEMPOTENCY_TTL_S),
            wait_replicas=number("PUBLISH_WAIT_REPLICAS", int, 0),
            wait_timeout_ms=number("PUBLISH_WAIT_TIMEOUT_MS", int, PUBLISH_WAIT_TIMEOUT_MS),
            max_connections=number("REDIS_MAX_CONNECTIONS", int, 20),
            pool_timeout_s=number("REDIS_POOL_TIMEOUT_S", float, 2.0),
            socket_timeout_s=number("REDIS_SOCKET_TIMEOUT_S", float, 5.0),
        )


def check_topology(topology: RedisTopology) -> None:
    """`ConfigurationError` naming the setting for anything that cannot publish."""
    url = topology.url or ""
    if url.startswith("memory://"):
        raise ConfigurationError(
            "NOTIFY_REDIS_URL=memory:// is the service's in-process development broker: "
            "a publisher in another process cannot reach it; point NOTIFY_REDIS_URL at "
            "Redis (redis://host:6379/0), or publish through the HTTP API"
        )
    if topology.mode is RedisMode.STANDALONE:
        if not url:
            raise ConfigurationError(
                "NOTIFY_REDIS_URL is not set: a publisher needs Redis (redis://host:6379/0)"
            )
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigurationError("NOTIFY_REDIS_URL must be redis://, rediss:// or unix://")
    elif topology.mode is RedisMode.SENTINEL:
        if not topology.nodes or not topology.sentinel_master:
            raise ConfigurationError(
                "NOTIFY_REDIS_MODE=sentinel needs NOTIFY_REDIS_SENTINELS (host:port,...) "
                "and NOTIFY_REDIS_SENTINEL_MASTER"
            )
    elif not topology.seed_addresses():
        raise ConfigurationError(
            "NOTIFY_REDIS_MODE=cluster needs a seed node: NOTIFY_REDIS_URL "
            "(redis://host:port) or NOTIFY_REDIS_CLUSTER_NODES (host:port,...)"
        )
