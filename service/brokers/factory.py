"""Builds the broker for the configured Redis topology (`notify_publisher.topology`)."""

from __future__ import annotations

from notify_publisher.topology import RedisMode, RedisTopology

from service.brokers.base import Broker
from service.brokers.cluster import ClusterBroker
from service.brokers.redis import RedisBroker


def build_broker(
    topology: RedisTopology,
    *,
    control_channel: str,
    max_connections: int,
    pool_timeout_s: float,
    socket_timeout_s: float,
) -> Broker:
    """A broker for `topology`; nothing connects until `start()`, which refuses a
    Redis of another kind than configured (`BrokerTopologyError`)."""
    if topology.mode is RedisMode.CLUSTER:
        return ClusterBroker(
            topology,
            control_channel=control_channel,
            max_connections=max_connections,
            pool_timeout_s=pool_timeout_s,
            socket_timeout_s=socket_timeout_s,
        )
    if topology.mode is RedisMode.SENTINEL:
        return RedisBroker.sentinel(
            topology,
            control_channel=control_channel,
            max_connections=max_connections,
            pool_timeout_s=pool_timeout_s,
            socket_timeout_s=socket_timeout_s,
        )
    assert topology.url is not None
    username, password = topology.username, topology.password
    return RedisBroker.standalone(
        url=topology.url,
        control_channel=control_channel,
        max_connections=max_connections,
        pool_timeout_s=pool_timeout_s,
        socket_timeout_s=socket_timeout_s,
        username=username,
        password=password,
    )
