"""A service that cannot work with the Redis it finds refuses to start and says why
in one line (never "ready" and then 500s), and `notify doctor` tells which
topology the settings reach and whether every node answers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from service.config import Settings
from tests.conftest import SettingsFactory
from tests.support.app_server import settings_env
from tests.support.redis_server import RedisServer, free_port
from tests.support.redis_topologies import LocalCluster

pytestmark = pytest.mark.slow


def notify(
    settings: Settings, *args: str, timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        env=settings_env(settings.model_copy(update={"port": free_port()})),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def refusal_lines(output: str) -> list[str]:
    lines = []
    for line in output.splitlines():
        if line.startswith("{") and '"redis_topology_refused"' in line:
            lines.append(json.loads(line)["reason"])
    return lines


@pytest.mark.own_topology
def test_standalone_mode_pointed_at_a_cluster_refuses_to_start(
    redis_cluster: LocalCluster, make_settings: SettingsFactory
) -> None:
    """The issue's new user: a 3-primary cluster behind NOTIFY_REDIS_URL with the
    default mode. Before, the process said ready and then every stream and publish
    failed with MOVED."""
    settings = make_settings(redis_url=redis_cluster.url, redis_mode="standalone")
    result = notify(settings, "serve")
    assert result.returncode != 0
    (reason,) = refusal_lines(result.stdout + result.stderr)
    assert reason == (
        f"NOTIFY_REDIS_MODE=standalone but 127.0.0.1:{redis_cluster.nodes[0].port} is a Redis "
        "Cluster node: set NOTIFY_REDIS_MODE=cluster"
    )


@pytest.mark.own_topology
def test_cluster_mode_pointed_at_a_standalone_server_refuses_to_start(
    redis_server: RedisServer, make_settings: SettingsFactory
) -> None:
    settings = make_settings(
        redis_url=f"redis://127.0.0.1:{redis_server.port}", redis_mode="cluster"
    )
    result = notify(settings, "serve")
    assert result.returncode != 0
    (reason,) = refusal_lines(result.stdout + result.stderr)
    assert "NOTIFY_REDIS_MODE=cluster but" in reason
    assert "is a standalone Redis: set NOTIFY_REDIS_MODE=standalone" in reason


def test_a_replica_is_refused_as_the_standalone_server(
    own_redis: RedisServer, make_settings: SettingsFactory
) -> None:
    replica = RedisServer(extra_args=("--replicaof", "127.0.0.1", str(own_redis.port)))
    replica.start()
    try:
        result = notify(make_settings(redis_url=replica.url), "serve")
    finally:
        replica.stop(kill=True)
    assert result.returncode != 0
    (reason,) = refusal_lines(result.stdout + result.stderr)
    assert "is a read-only replica" in reason


@pytest.mark.own_topology
def test_publish_from_the_command_line_refuses_the_wrong_topology(
    redis_cluster: LocalCluster, make_settings: SettingsFactory
) -> None:
    settings = make_settings(redis_url=redis_cluster.url, redis_mode="standalone")
    result = notify(
        settings, "publish", "--patient-id", "pt_1", "--appointment-id", "ap_1", "--status", "x"
    )
    assert result.returncode == 1
    assert "is a Redis Cluster node: set NOTIFY_REDIS_MODE=cluster" in result.stderr


@pytest.mark.own_topology
def test_doctor_describes_the_cluster_and_every_node(
    redis_cluster: LocalCluster, make_settings: SettingsFactory
) -> None:
    result = notify(make_settings(redis_url=redis_cluster.url, redis_mode="cluster"), "doctor")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "found: Redis Cluster, 3 shard primaries, 3 replicas, 16384/16384 slots served" in out
    for node in redis_cluster.nodes:
        assert f"127.0.0.1:{node.port}: " in out
    assert out.count("replica of 127.0.0.1:") == 3
    assert out.rstrip().endswith("result: ok")


@pytest.mark.own_topology
def test_doctor_says_which_mode_to_set(
    redis_cluster: LocalCluster, make_settings: SettingsFactory
) -> None:
    result = notify(make_settings(redis_url=redis_cluster.url, redis_mode="standalone"), "doctor")
    assert result.returncode == 1
    assert "set NOTIFY_REDIS_MODE=cluster" in result.stdout


def test_doctor_on_a_standalone_server(
    own_redis: RedisServer, make_settings: SettingsFactory
) -> None:
    result = notify(make_settings(redis_url=own_redis.url), "doctor")
    assert result.returncode == 0, result.stdout
    assert f"found: standalone Redis at 127.0.0.1:{own_redis.port}" in result.stdout
    own_redis.stop(kill=True)
    result = notify(make_settings(redis_url=own_redis.url), "doctor")
    assert result.returncode == 1
    assert f"127.0.0.1:{own_redis.port} does not answer" in result.stdout
