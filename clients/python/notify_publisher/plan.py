"""From a caller's events and options to the script's requests, the same for the
asyncio and the blocking publisher."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Self

from notify_publisher.batch import Durability
from notify_publisher.config import PublisherConfig
from notify_publisher.errors import ConfigurationError, PublishRefusedError
from notify_publisher.events import EventCreate
from notify_publisher.request import (
    GENERATED_KEY_TTL_S,
    PublishRequest,
    build_request,
    new_idempotency_key,
    prepare_event,
)
from notify_publisher.topology import RedisMode, mismatch


def node_options(config: PublisherConfig) -> dict[str, Any]:
    """Connection options of every data node (standalone, Sentinel's primary,
    each Cluster node)."""
    username, password = config.topology.credentials()
    return {
        "username": username,
        "password": password,
        "ssl": config.topology.uses_tls,
        "socket_timeout": config.socket_timeout_s,
        "socket_connect_timeout": config.socket_timeout_s,
        # A silent half-open socket is found by a PING every 10 s of idleness.
        "health_check_interval": 10,
    }


def cluster_options(config: PublisherConfig) -> dict[str, Any]:
    """`RedisCluster`'s options besides its seeds and `retry` (both clients)."""
    return {
        "require_full_coverage": False,
        "max_connections": config.max_connections,
        **node_options(config),
    }


def primary_options(config: PublisherConfig) -> dict[str, Any]:
    """`Sentinel.master_for`'s options besides the master's name, its pool class
    and `retry` (both clients)."""
    return {
        "max_connections": config.max_connections,
        "timeout": config.pool_timeout_s,
        "check_connection": True,
    }


def pool_options(config: PublisherConfig) -> dict[str, Any]:
    """`BlockingConnectionPool.from_url`'s options besides the URL and `retry`
    (both clients): the URL says whether TLS is used."""
    return {
        "max_connections": config.max_connections,
        "timeout": config.pool_timeout_s,
        **{k: v for k, v in node_options(config).items() if v is not None and k != "ssl"},
    }


def unanswered(config: PublisherConfig) -> PublishRefusedError:
    """What `connect()` raises when Redis did not answer its first questions."""
    return PublishRefusedError(
        "unavailable", f"Redis ({config.topology.describe()}) did not answer"
    )


def not_a_cluster(config: PublisherConfig) -> str:
    return (
        f"NOTIFY_REDIS_MODE=cluster but {config.topology.describe()} is not a Redis "
        "Cluster: set NOTIFY_REDIS_MODE=standalone"
    )


def standalone_problem(
    config: PublisherConfig, server: Mapping[str, Any], replication: Mapping[str, Any]
) -> ConfigurationError | None:
    """The error when `INFO server` and `INFO replication` of the one server
    (standalone, or Sentinel's primary) show it is not what was configured."""
    problem = mismatch(
        RedisMode.STANDALONE,
        config.topology.describe(),
        str(server.get("redis_mode", "standalone")),
        str(replication.get("role", "master")),
    )
    return None if problem is None else ConfigurationError(problem)


class Configured:
    """The constructors the asyncio and the blocking publisher share."""

    def __init__(self, config: PublisherConfig) -> None:
        self.config = config

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Self:
        """A standalone Redis (`redis://`, `rediss://`, `unix://`); `options` are
        `PublisherConfig` fields (`key_prefix`, `wait_replicas`, ...)."""
        return cls(PublisherConfig.from_url(url, **options))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        """From the service's `NOTIFY_REDIS_*` (and other `NOTIFY_*`) variables."""
        return cls(PublisherConfig.from_env(environ))


class Plan:
    def __init__(self, config: PublisherConfig) -> None:
        self._config = config
        self._sharded = config.topology.mode is RedisMode.CLUSTER

    @staticmethod
    def sentinel_kwargs(config: PublisherConfig) -> dict[str, Any]:
        topology = config.topology
        kwargs: dict[str, Any] = {
            "socket_timeout": config.socket_timeout_s,
            "socket_connect_timeout": config.socket_timeout_s,
        }
        if topology.sentinel_username:
            kwargs["username"] = topology.sentinel_username
        if topology.sentinel_password:
            kwargs["password"] = topology.sentinel_password
        if topology.uses_tls:
            kwargs["ssl"] = True
        return kwargs

    def durability(self, wait_replicas: int | None) -> Durability | None:
        replicas = self._config.wait_replicas if wait_replicas is None else wait_replicas
        if replicas < 0:
            raise ValueError("wait_replicas must be 0 or more")
        if replicas == 0:
            return None
        return Durability(replicas=replicas, timeout_ms=self._config.wait_timeout_ms)

    def requests(
        self,
        events: Sequence[EventCreate | Mapping[str, Any]],
        keys: Sequence[str | None] | None,
        wait_replicas: int | None,
    ) -> tuple[list[PublishRequest], Durability | None]:
        """One request per event; a key made up for each event without one (kept
        for the retries of this call only). Validation errors are raised before
        anything is sent."""
        if keys is not None and len(keys) != len(events):
            raise ValueError("idempotency_keys must have one entry per event (None: generated)")
        durability = self.durability(wait_replicas)
        owner = uuid.uuid4().hex
        config = self._config
        requests = []
        for index, event in enumerate(events):
            given = keys[index] if keys is not None else None
            requests.append(
                build_request(
                    prepare_event(event),
                    keys=config.keys,
                    maxlen=config.history_maxlen,
                    ttl_s=config.history_ttl_s,
                    sharded=self._sharded,
                    idempotency_key=given or new_idempotency_key(),
                    idempotency_ttl_s=config.idempotency_ttl_s if given else GENERATED_KEY_TTL_S,
                    hold_ms=durability.hold_ms if durability is not None else 0,
                    owner=owner,
                )
            )
        return requests, durability
