"""Real Redis Cluster and Sentinel deployments owned by the tests, on free loopback
ports, so fault tests can migrate slots, fail over and kill nodes.

- `LocalCluster`: `redis-server --cluster-enabled yes` per node (3 primaries and a
  replica each by default), joined by `redis-cli --cluster create` (`valkey-cli`
  with the Valkey binary). `cluster-require-full-coverage no`, so that one shard
  down leaves the others serving, as the README asks of production clusters.
- `LocalSentinel`: one primary, one replica and three Sentinels (quorum 2).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import redis
from redis.crc import key_slot

from tests.support.redis_server import (
    RedisServer,
    find_cli_binary,
    free_cluster_port,
    free_port,
    wait_until,
)

# Short node timeout: a killed primary is failed over in a few seconds.
NODE_TIMEOUT_MS = 1500


@dataclass
class NodeInfo:
    id: str
    port: int
    flags: set[str]
    primary_id: str | None
    slots: list[tuple[int, int]]

    @property
    def is_primary(self) -> bool:
        return "master" in self.flags and "fail" not in self.flags


def parse_cluster_nodes(text: str) -> list[NodeInfo]:
    nodes = []
    for line in text.strip().splitlines():
        parts = line.split()
        address = parts[1].split("@")[0]
        port = int(address.rsplit(":", 1)[1])
        slots = []
        for item in parts[8:]:
            if item.startswith("["):
                continue  # a slot being migrated or imported
            low, _, high = item.partition("-")
            slots.append((int(low), int(high or low)))
        nodes.append(
            NodeInfo(
                id=parts[0],
                port=port,
                flags=set(parts[2].split(",")),
                primary_id=None if parts[3] == "-" else parts[3],
                slots=slots,
            )
        )
    return nodes


class LocalCluster:
    def __init__(self, primaries: int = 3, replicas: int = 1) -> None:
        self.primaries = primaries
        self.replicas = replicas
        self.nodes: list[RedisServer] = []
        for _ in range(primaries * (1 + replicas)):
            port = free_cluster_port()
            self.nodes.append(
                RedisServer(
                    port,
                    extra_args=(
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        f"nodes-{port}.conf",
                        "--cluster-node-timeout",
                        str(NODE_TIMEOUT_MS),
                        "--cluster-require-full-coverage",
                        "no",
                        # A replica of a killed primary takes over at once.
                        "--cluster-replica-validity-factor",
                        "0",
                    ),
                )
            )

    # --- set-up ----------------------------------------------------------------

    def start(self) -> None:
        try:
            self._create()
        except BaseException:
            # Never leave nodes behind when the cluster could not be formed.
            self.stop()
            raise

    def _create(self) -> None:
        for node in self.nodes:
            node.start()
        subprocess.run(
            [
                find_cli_binary(),
                "--cluster",
                "create",
                *(f"127.0.0.1:{n.port}" for n in self.nodes),
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        self.wait_healthy()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop(kill=True)

    def wait_healthy(self, timeout_s: float = 30) -> None:
        """Every running node says `cluster_state:ok`, knows every node, and every
        replica has synced with its primary."""
        expected = self.primaries * (1 + self.replicas)

        def healthy() -> bool:
            for node in self.running_nodes():
                with node.client() as client:
                    info = client.cluster("info")
                    if info.get("cluster_state") != "ok":
                        return False
                    if int(info.get("cluster_known_nodes", 0)) < expected:
                        return False
                    replication = client.info("replication")
                    if replication.get("role") == "slave" and (
                        replication.get("master_link_status") != "up"
                    ):
                        return False
            return True

        wait_until(healthy, timeout_s, "the cluster did not become healthy")

    # --- reading the topology -------------------------------------------------------

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}"

    def running_nodes(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.running]

    def node(self, port: int) -> RedisServer:
        return next(n for n in self.nodes if n.port == port)

    def topology(self) -> list[NodeInfo]:
        for node in self.running_nodes():
            try:
                with node.client() as client:
                    text = client.execute_command("CLUSTER", "NODES")
            except redis.RedisError:
                continue
            return parse_cluster_nodes(text.decode() if isinstance(text, bytes) else text)
        raise AssertionError("no cluster node answers")

    def primary_for_slot(self, slot: int) -> RedisServer:
        for info in self.topology():
            if info.is_primary and any(low <= slot <= high for low, high in info.slots):
                return self.node(info.port)
        raise AssertionError(f"slot {slot} has no primary")

    def primary_for(self, key: str) -> RedisServer:
        return self.primary_for_slot(key_slot(key.encode()))

    def replicas_of(self, primary: RedisServer) -> list[RedisServer]:
        infos = self.topology()
        primary_id = next(i.id for i in infos if i.port == primary.port)
        return [self.node(i.port) for i in infos if i.primary_id == primary_id]

    def primary_nodes(self) -> list[RedisServer]:
        return [self.node(i.port) for i in self.topology() if i.is_primary and i.slots]

    def node_id(self, node: RedisServer) -> str:
        with node.client() as client:
            return str(client.execute_command("CLUSTER MYID").decode())

    def client(self) -> redis.RedisCluster:
        return redis.RedisCluster(
            host="127.0.0.1", port=self.running_nodes()[0].port, socket_timeout=5
        )

    def pubsub_clients(self, node: RedisServer) -> int:
        """Connections of `node` in (sharded or classic) pub/sub mode."""
        with node.client() as client:
            return len(client.client_list(_type="pubsub"))

    # --- faults --------------------------------------------------------------------

    def migrate_slot(self, slot: int, target: RedisServer, between_keys: object = None) -> None:
        """Move `slot` with its keys to `target`, the steps `redis-cli --cluster
        reshard` takes for each slot: IMPORTING / MIGRATING, MIGRATE every key,
        then SETSLOT NODE on both ends and the other primaries. `between_keys`
        (a callable) runs after each batch, e.g. to publish meanwhile."""
        source = self.primary_for_slot(slot)
        source_id, target_id = self.node_id(source), self.node_id(target)
        with target.client() as t, source.client() as s:
            t.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id)
            s.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
            while True:
                keys = s.execute_command("CLUSTER GETKEYSINSLOT", slot, 100)
                if not keys:
                    break
                s.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
                if callable(between_keys):
                    between_keys()
            t.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
            s.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
        for primary in self.primary_nodes():
            if primary.port not in (source.port, target.port):
                with primary.client() as p:
                    p.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
        wait_until(
            lambda: self.primary_for_slot(slot).port == target.port,
            10,
            f"slot {slot} did not move to {target.port}",
        )

    def manual_failover(self, replica: RedisServer) -> None:
        """`CLUSTER FAILOVER` on `replica`: it and its primary swap roles."""
        with replica.client() as client:
            client.execute_command("CLUSTER FAILOVER")
        wait_until(lambda: self._role(replica) == "master", 15, f"{replica.port} did not take over")
        self.wait_healthy()

    def kill(self, node: RedisServer) -> None:
        node.stop(kill=True)

    def wait_promoted(self, old_primary: RedisServer, slot: int, timeout_s: float = 20) -> None:
        """After `old_primary` died: wait until `slot` has another, live primary."""

        def promoted() -> bool:
            try:
                owner = self.primary_for_slot(slot)
            except AssertionError:
                return False
            return owner.port != old_primary.port and owner.running

        wait_until(promoted, timeout_s, f"no replica of {old_primary.port} took over")

    @staticmethod
    def _role(node: RedisServer) -> str:
        try:
            with node.client() as client:
                return str(client.info("replication").get("role"))
        except redis.RedisError:
            return "unreachable"


MASTER_NAME = "notifymaster"


class LocalSentinel:
    """A primary, one replica and three Sentinels watching them (quorum 2)."""

    def __init__(self) -> None:
        self.primary = RedisServer()
        self.replica = RedisServer(extra_args=("--replicaof", "127.0.0.1", str(self.primary.port)))
        self.sentinel_ports = [free_port() for _ in range(3)]
        self._sentinels: list[subprocess.Popen[bytes]] = []
        self.master_name = MASTER_NAME

    @property
    def addresses(self) -> str:
        return ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)

    def start(self) -> None:
        try:
            self._create()
        except BaseException:
            self.stop()
            raise

    def _create(self) -> None:
        self.primary.start()
        self.replica.start()
        wait_until(lambda: _link_up(self.replica), 20, "the replica did not sync with the primary")
        binary = self.primary.binary
        for port in self.sentinel_ports:
            conf = Path(self.primary.dir) / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\n"
                "bind 127.0.0.1\n"
                f"dir {self.primary.dir}\n"
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.primary.port} 2\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} 1000\n"
                f"sentinel failover-timeout {MASTER_NAME} 5000\n"
                f"sentinel parallel-syncs {MASTER_NAME} 1\n"
            )
            self._sentinels.append(
                subprocess.Popen(
                    [binary, str(conf), "--sentinel", "--loglevel", "warning"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        wait_until(self._sentinels_agree, 30, "the Sentinels did not find each other")

    def _sentinels_agree(self) -> bool:
        for port in self.sentinel_ports:
            try:
                with redis.Redis(host="127.0.0.1", port=port, socket_timeout=2) as s:
                    master = s.sentinel_master(MASTER_NAME)
                    if int(master.get("num-other-sentinels", 0)) < 2:
                        return False
                    if int(master.get("num-slaves", 0)) < 1:
                        return False
            except redis.RedisError:
                return False
        return True

    def master_port(self) -> int | None:
        for port in self.sentinel_ports:
            try:
                with redis.Redis(host="127.0.0.1", port=port, socket_timeout=2) as s:
                    address = s.sentinel_get_master_addr_by_name(MASTER_NAME)
            except redis.RedisError:
                continue
            if address:
                return int(address[1])
        return None

    def kill_primary(self) -> RedisServer:
        """Kill the current primary; returns the server that should take over."""
        port = self.master_port()
        dead, survivor = (
            (self.primary, self.replica)
            if port == self.primary.port
            else (self.replica, self.primary)
        )
        dead.stop(kill=True)
        return survivor

    def wait_failover(self, survivor: RedisServer, timeout_s: float = 30) -> None:
        wait_until(
            lambda: (
                self.master_port() == survivor.port and LocalCluster._role(survivor) == "master"
            ),
            timeout_s,
            f"the Sentinels did not promote {survivor.port}",
        )

    def stop(self) -> None:
        for proc in self._sentinels:
            proc.kill()
            proc.wait(timeout=10)
        self._sentinels.clear()
        self.primary.stop(kill=True)
        self.replica.stop(kill=True)


def _link_up(replica: RedisServer) -> bool:
    try:
        with replica.client() as client:
            return bool(client.info("replication").get("master_link_status") == "up")
    except redis.RedisError:
        return False
