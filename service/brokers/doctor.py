"""`notify doctor`: which Redis topology the settings reach, and whether every
node answers. Read-only: INFO, CLUSTER NODES, SENTINEL queries and PING."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from notify_publisher.topology import RedisMode, RedisTopology, mismatch
from redis.asyncio import Redis
from redis.exceptions import RedisError

from service.brokers.redis import UNAVAILABLE, no_retry, server_kind

ANSWER_TIMEOUT_S = 2.0


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def render(self) -> str:
        verdict = (
            ["result: ok"]
            if self.ok
            else [f"result: {len(self.problems)} problem(s)", *(f"  - {p}" for p in self.problems)]
        )
        return "\n".join([*self.lines, *verdict])


def _node(topology: RedisTopology, host: str, port: int, *, sentinel: bool = False) -> Redis:
    username, password = (
        (topology.sentinel_username, topology.sentinel_password)
        if sentinel
        else topology.credentials()
    )
    return Redis(
        host=host,
        port=port,
        username=username,
        password=password,
        ssl=topology.uses_tls,
        socket_timeout=ANSWER_TIMEOUT_S,
        socket_connect_timeout=ANSWER_TIMEOUT_S,
        retry=no_retry(),
    )


async def _ping_ms(client: Redis) -> float:
    started = time.perf_counter()
    await client.ping()
    return (time.perf_counter() - started) * 1000


async def diagnose(topology: RedisTopology) -> Report:
    report = Report(
        [f"configured: NOTIFY_REDIS_MODE={topology.mode.value} ({topology.describe()})"]
    )
    if topology.mode is RedisMode.CLUSTER:
        await _cluster(topology, report)
    elif topology.mode is RedisMode.SENTINEL:
        await _sentinel(topology, report)
    else:
        await _standalone(topology, report)
    return report


async def _describe_server(client: Redis, where: str, report: Report) -> tuple[str, str] | None:
    try:
        found_mode, role = await server_kind(client)
        info: dict[str, Any] = await client.info("server")
        ms = await _ping_ms(client)
    except (*UNAVAILABLE, RedisError) as exc:
        report.problems.append(f"{where} does not answer ({type(exc).__name__})")
        return None
    version = info.get("valkey_version") or info.get("redis_version", "?")
    report.lines.append(
        f"  {where}: {found_mode}, role {role}, version {version}, PING {ms:.1f} ms"
    )
    return found_mode, role


async def _standalone(topology: RedisTopology, report: Report) -> None:
    assert topology.url is not None
    where = topology.server
    options: dict[str, Any] = {
        "socket_timeout": ANSWER_TIMEOUT_S,
        "socket_connect_timeout": ANSWER_TIMEOUT_S,
        "retry": no_retry(),
    }
    if topology.username:
        options["username"] = topology.username
    if topology.password:
        options["password"] = topology.password
    client = Redis.from_url(topology.url, **options)
    try:
        found = await _describe_server(client, where, report)
    finally:
        await client.aclose()
    if found is not None:
        report.lines.insert(1, f"found: {found[0]} Redis at {where}")
        problem = mismatch(RedisMode.STANDALONE, where, *found)
        if problem is not None:
            report.problems.append(problem)


def _parse_nodes(text: str) -> list[dict[str, Any]]:
    nodes = []
    for line in text.strip().splitlines():
        parts = line.split()
        host, _, port = parts[1].split("@")[0].rpartition(":")
        nodes.append(
            {
                "id": parts[0],
                "host": host or "127.0.0.1",
                "port": int(port),
                "flags": set(parts[2].split(",")),
                "primary": None if parts[3] == "-" else parts[3],
                "slots": [s for s in parts[8:] if not s.startswith("[")],
            }
        )
    return nodes


def _slot_count(ranges: list[str]) -> int:
    total = 0
    for item in ranges:
        low, _, high = item.partition("-")
        total += int(high or low) - int(low) + 1
    return total


async def _cluster(topology: RedisTopology, report: Report) -> None:
    nodes: list[dict[str, Any]] | None = None
    for host, port in topology.seed_addresses():
        seed = _node(topology, host, port)
        try:
            found = await _describe_server(seed, f"seed {host}:{port}", report)
            if found is None:
                continue
            problem = mismatch(RedisMode.CLUSTER, f"{host}:{port}", *found)
            if problem is not None:
                report.problems.append(problem)
                return
            raw = await seed.execute_command("CLUSTER", "NODES")  # type: ignore[no-untyped-call]
            nodes = _parse_nodes(raw.decode() if isinstance(raw, bytes) else str(raw))
            break
        except (*UNAVAILABLE, RedisError) as exc:
            report.problems.append(f"seed {host}:{port}: {type(exc).__name__}")
        finally:
            await seed.aclose()
    if nodes is None:
        report.problems.append("no seed node answered")
        return
    primaries = [n for n in nodes if "master" in n["flags"] and n["slots"]]
    replicas = [n for n in nodes if "slave" in n["flags"]]
    covered = sum(_slot_count(n["slots"]) for n in primaries if "fail" not in n["flags"])
    report.lines.insert(
        1,
        f"found: Redis Cluster, {len(primaries)} shard primaries, {len(replicas)} replicas, "
        f"{covered}/16384 slots served",
    )
    if covered < 16384:
        report.problems.append(f"{16384 - covered} slots have no live primary")

    async def check(node: dict[str, Any]) -> str | None:
        client = _node(topology, node["host"], node["port"])
        try:
            ms = await asyncio.wait_for(_ping_ms(client), ANSWER_TIMEOUT_S)
        except (*UNAVAILABLE, RedisError) as exc:
            return f"does not answer ({type(exc).__name__})"
        finally:
            await client.aclose()
        return f"PING {ms:.1f} ms"

    results = await asyncio.gather(*(check(n) for n in nodes))
    by_id = {n["id"]: n for n in nodes}
    for node, result in zip(nodes, results, strict=True):
        assert result is not None
        if "master" in node["flags"]:
            role = f"primary of {_slot_count(node['slots'])} slots ({' '.join(node['slots'])})"
        else:
            primary = by_id.get(node["primary"] or "")
            role = f"replica of {primary['host']}:{primary['port']}" if primary else "replica"
        flags = " [fail]" if "fail" in node["flags"] else ""
        report.lines.append(f"  {node['host']}:{node['port']}: {role}{flags}, {result}")
        if "does not answer" in result:
            report.problems.append(f"{node['host']}:{node['port']} {result}")
    report.lines.append(
        "  sharded pub/sub: one connection per shard primary in use, per process; "
        "publishers must use SPUBLISH"
    )


async def _sentinel(topology: RedisTopology, report: Report) -> None:
    name = topology.sentinel_master
    assert name is not None
    addresses: set[tuple[str, int]] = set()
    answered = 0
    for host, port in topology.seed_addresses():
        sentinel = _node(topology, host, port, sentinel=True)
        try:
            found_mode, _ = await server_kind(sentinel)
            if found_mode != "sentinel":
                report.problems.append(
                    f"{host}:{port} in NOTIFY_REDIS_SENTINELS is not a Sentinel ({found_mode})"
                )
                continue
            address = await sentinel.execute_command(  # type: ignore[no-untyped-call]
                "SENTINEL GET-MASTER-ADDR-BY-NAME", name
            )
            answered += 1
            if not address:
                report.problems.append(f"Sentinel {host}:{port} knows no primary named {name!r}")
                continue
            primary = (address[0].decode(), int(address[1]))
            addresses.add(primary)
            report.lines.append(
                f"  Sentinel {host}:{port}: primary {name!r} at {primary[0]}:{primary[1]}"
            )
        except (*UNAVAILABLE, RedisError) as exc:
            report.problems.append(f"Sentinel {host}:{port} does not answer ({type(exc).__name__})")
        finally:
            await sentinel.aclose()
    report.lines.insert(
        1,
        f"found: Sentinel, {answered}/{len(topology.seed_addresses())} Sentinels answer, "
        f"primary {name!r} at {', '.join(f'{h}:{p}' for h, p in sorted(addresses)) or 'unknown'}",
    )
    if len(addresses) > 1:
        report.problems.append("the Sentinels disagree on where the primary is")
    for host, port in sorted(addresses):
        client = _node(topology, host, port)
        try:
            found = await _describe_server(client, f"primary {host}:{port}", report)
            if found is not None:
                problem = mismatch(RedisMode.STANDALONE, f"{host}:{port}", *found)
                if problem is not None:
                    report.problems.append(problem)
                replication = await client.info("replication")
                replicas = int(replication.get("connected_slaves", 0))
                report.lines.append(f"  primary {host}:{port}: {replicas} replica(s) connected")
        except (*UNAVAILABLE, RedisError) as exc:
            report.problems.append(f"primary {host}:{port}: {type(exc).__name__}")
        finally:
            await client.aclose()
