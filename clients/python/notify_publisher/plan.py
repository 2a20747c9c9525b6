"""From a caller's events and options to the script's requests, the same for the
asyncio and the blocking publisher."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from notify_publisher.batch import Durability
from notify_publisher.config import PublisherConfig
from notify_publisher.events import EventCreate
from notify_publisher.request import (
    GENERATED_KEY_TTL_S,
    PublishRequest,
    build_request,
    new_idempotency_key,
    prepare_event,
)
from notify_publisher.topology import RedisMode


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
