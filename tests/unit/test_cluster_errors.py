"""redis-py 8.1's cluster client can fail a command with RuntimeError or
AttributeError when it closed the command's connection while reloading its slot
map (seen under load in `python -m bench shards`): that is Redis being
unavailable (a 503), never a 500."""

from __future__ import annotations

from typing import Any

import pytest
from notify_publisher.topology import RedisMode, RedisTopology

from service.brokers.cluster import ClusterBroker
from service.failures import BrokerUnavailableError


class _ClosedUnderneath:
    """Stands in for the cluster client at the moment it closed a connection."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def get(self, key: str) -> Any:
        raise self.error

    async def xrevrange(self, key: str, count: int) -> Any:
        raise self.error


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("unable to perform operation on <TCPTransport closed=True>"),
        AttributeError("'NoneType' object has no attribute 'writelines'"),
    ],
)
async def test_a_connection_closed_by_the_cluster_client_is_unavailable(error: Exception) -> None:
    broker = ClusterBroker(
        RedisTopology(mode=RedisMode.CLUSTER, url="redis://127.0.0.1:1"),
        control_channel="t:control",
        max_connections=4,
        pool_timeout_s=1,
        socket_timeout_s=1,
    )
    real = broker.client
    broker.client = _ClosedUnderneath(error)
    try:
        with pytest.raises(BrokerUnavailableError):
            await broker.get_values("t:revoked:jti:a", "t:revoked:sub:b")
        with pytest.raises(BrokerUnavailableError):
            await broker.read_head("t:history:{pt_1}")
    finally:
        broker.client = real
        await broker.stop()
