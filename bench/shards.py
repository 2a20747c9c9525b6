"""``python -m bench shards``: unicast to 10,000 patients through 1 and through 3
Redis Cluster shard primaries (issue 14), and the Redis connections of one
service process in each mode.

    python -m bench shards                                  # ~5 minutes
    python -m bench shards --patients 2000 --duration-s 2   # a short check
    python -m bench shards --topologies cluster-3           # one column only

For each topology (``standalone``: one redis-server, ``cluster-1`` and
``cluster-3``: a Redis Cluster of 1 or 3 primaries, no replicas,
``cluster-require-full-coverage no``, slots split evenly), on free loopback
ports:

- ONE ``notify serve`` (``NOTIFY_REDIS_MODE=cluster`` or ``standalone``, the
  capacity limits raised as ``peers.start_ours`` does);
- one SSE stream per patient, opened by the generator's subscriber processes
  (``bench/worker.py``), and the readiness barrier (seq-0 probes until every
  stream has seen one);
- ``--publishers`` publisher processes (multiprocessing), patient ``i`` always
  on publisher ``i % P``: each holds one connection per shard primary and sends
  raw ``SPUBLISH notify:patient:{pt_i} <event JSON>`` (``PUBLISH`` in standalone)
  to the node that owns the channel's slot (``CLUSTER SLOTS`` + ``key_slot``),
  pipelined in 2 ms ticks; events round-robin over the patients;
- a fixed rate first (``--fixed-rate``, 2,000 events/s), then a ladder from
  twice that (doubling per step, one bisection after the first failing step). A step
  passes when nothing is lost or duplicated and p99 <= 250 ms.

Per step: latency publish -> SSE receipt, lost / duplicates, CPU of the service,
of the generator and of each Redis primary (``/proc/<pid>/stat`` utime+stime
over the step), events delivered per shard (patients grouped by the owner of
their slot) and each node's own count of ``SPUBLISH``/``PUBLISH`` calls
(``INFO commandstats``). Throughout: every node's ``CLIENT LIST`` once a second,
the service's connections only (the bench names its own ``bench-*``), peak and
end: normal, sharded pub/sub, classic pub/sub; checked against the README's
sizing (standalone: <= NOTIFY_REDIS_MAX_CONNECTIONS + 1 pub/sub; Cluster per
primary: <= N + 1 sharded pub/sub, + 1 control connection on one node).

Writes ``bench/results/<timestamp>-shards.md`` (+ ``.json``) and
``latest-shards.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import sys
import threading
import time
import traceback
import types
import urllib.error
import urllib.request
from array import array
from pathlib import Path

import redis as redis_py
from redis.crc import key_slot

from bench import peers, procstat, report
from bench.proto import RespPublisher, now_ns, resp_command
from bench.scenarios import (
    P99_OK_MS,
    Harness,
    close_streams,
    fmt,
    lat_summary,
    open_streams,
    settle,
)
from bench.worker import (
    PublisherWorker,
    StreamClientWorker,
    chan_name,
    event_json,
    run_worker,
)
from tests.support.redis_server import RedisServer, free_cluster_port, wait_until

SLOTS = 16384
BENCH_NAME = b"bench-publisher"
PROBE_NAME = "bench-probe"
ALL_TOPOLOGIES = ["standalone", "cluster-1", "cluster-3"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def channel(i: int) -> str:
    return f"notify:patient:{{{chan_name(i)}}}"


# ------------------------------------------------------------------------ Redis nodes


class Topology:
    """One redis-server (standalone) or a Redis Cluster of ``primaries`` primaries
    without replicas, joined by CLUSTER MEET and ADDSLOTSRANGE (``redis-cli
    --cluster create`` wants at least 3 primaries, so it cannot make the 1-shard
    cluster; tests/support/redis_topologies.py's LocalCluster uses it)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.cluster = name.startswith("cluster")
        self.primaries = int(name.split("-")[1]) if self.cluster else 1
        self.nodes: list[RedisServer] = []
        for _ in range(self.primaries):
            if self.cluster:
                port = free_cluster_port()
                args: tuple[str, ...] = (
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    f"nodes-{port}.conf",
                    "--cluster-require-full-coverage",
                    "no",
                )
                self.nodes.append(RedisServer(port, extra_args=args))
            else:
                self.nodes.append(RedisServer())
        self.ranges: list[tuple[int, int, int]] = []  # (first slot, last slot, node index)

    @property
    def seed_url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}" + ("" if self.cluster else "/0")

    def pid(self, i: int) -> int:
        proc = self.nodes[i]._proc
        assert proc is not None
        return proc.pid

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        if not self.cluster:
            self.ranges = [(0, SLOTS - 1, 0)]
            return
        n = self.primaries
        with self.nodes[0].client() as first:
            for node in self.nodes[1:]:
                first.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
        for i, node in enumerate(self.nodes):
            low, high = i * SLOTS // n, (i + 1) * SLOTS // n - 1
            with node.client() as c:
                c.execute_command("CLUSTER", "ADDSLOTSRANGE", low, high)

        def agreed() -> bool:
            for node in self.nodes:
                with node.client() as c:
                    info = c.cluster("info")
                    if info.get("cluster_state") != "ok":
                        return False
                    if int(info.get("cluster_slots_ok", 0)) != SLOTS:
                        return False
                    if int(info.get("cluster_known_nodes", 0)) != n:
                        return False
            return True

        wait_until(agreed, 30, f"the {n}-primary cluster did not agree on its slots")
        self.ranges = self._cluster_slots()

    def _cluster_slots(self) -> list[tuple[int, int, int]]:
        by_port = {node.port: i for i, node in enumerate(self.nodes)}
        with self.nodes[0].client() as c:
            raw = c.execute_command("CLUSTER", "SLOTS")
        out = []
        # redis-py parses CLUSTER SLOTS into {(low, high): {"primary": (host, port), ...}}
        if isinstance(raw, dict):
            for (low, high), where in raw.items():
                out.append((int(low), int(high), by_port[int(where["primary"][1])]))
        else:
            for entry in raw:
                out.append((int(entry[0]), int(entry[1]), by_port[int(entry[2][1])]))
        return sorted(out)

    def owner(self, i: int) -> int:
        """Index of the node that owns patient ``i``'s channel slot."""
        slot = key_slot(channel(i).encode())
        for low, high, node in self.ranges:
            if low <= slot <= high:
                return node
        raise RuntimeError(f"slot {slot} has no owner")

    def stop(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.stop(kill=True)

    def cpu_s(self) -> list[float]:
        return [procstat.cpu_s(self.pid(i)) for i in range(len(self.nodes))]


# ------------------------------------------------------------------------- publishers


class CountingResp(RespPublisher):
    """RespPublisher that also counts error replies (``-MOVED``, ``-ERR``)."""

    def __init__(self) -> None:
        super().__init__()
        self.errors = 0
        self.first_error = b""

    def data_received(self, data):  # type: ignore[override]
        super().data_received(data)
        k = data.count(b"\r\n-") + (1 if data.startswith(b"-") else 0)
        if k:
            self.errors += k
            if not self.first_error:
                at = data.find(b"-")
                self.first_error = data[at : data.find(b"\r\n", at)][:120]


class ShardPublisher(PublisherWorker):
    """bench/worker.py's publisher (same pacing, seq and event JSON), with one
    connection per shard primary: each channel goes to the node owning its slot."""

    async def connect(self, target):
        loop = asyncio.get_running_loop()
        for old in getattr(self, "conns", []):
            if old.transport is not None:
                old.transport.close()
        self.seq = {}
        self.target = target
        self.conns: list[CountingResp] = []
        for host, port in target["nodes"]:
            _, p = await loop.create_connection(CountingResp, host, port)
            p.transport.write(resp_command(b"CLIENT", b"SETNAME", BENCH_NAME))
            p.sent += 1
            self.conns.append(p)
        self.redis = self.conns[0]  # not None: the HTTP paths of PublisherWorker stay off
        self.owner: list[int] = target["owner"]
        self.command = target["command"].encode()
        await self._drain(5)
        return {"ok": True}

    def _send(self, chans: list[int], seqs: list[int]) -> None:
        sent = now_ns()
        groups: dict[int, list[bytes]] = {}
        for c, s in zip(chans, seqs, strict=True):
            name = chan_name(c)
            groups.setdefault(self.owner[c], []).append(
                resp_command(
                    self.command,
                    b"notify:patient:{" + name.encode() + b"}",
                    event_json(name, s, sent),
                )
            )
        for node, commands in groups.items():
            p = self.conns[node]
            p.transport.write(b"".join(commands))
            p.sent += len(commands)

    def _backlog(self) -> int:
        return sum(p.sent - p.replies for p in self.conns)

    def errors(self):
        return {
            "errors": sum(p.errors for p in self.conns),
            "first": b"".join(p.first_error for p in self.conns)[:200].decode(errors="replace"),
        }


class ShardStreamClient(StreamClientWorker):
    """bench/worker.py's subscriber, which can also say which patients have a live stream."""

    def live_chans(self) -> list[int]:
        # A refusal (`event: reconnect`) ends the response, not the keep-alive connection.
        for c in self.conns:
            if c is not None and c.refused and not c.closed:
                c.abort()
        return sorted({c.chan for c in self.conns if c is not None and not c.closed})


def generator_main(conn, role: str) -> None:
    """A generator process: bench/worker.py's command loop around a ShardStreamClient
    or a ShardPublisher."""
    run_worker(conn, role, lambda: ShardStreamClient() if role == "sub" else ShardPublisher())


class ShardHarness(Harness):
    """The generator: ``n_subs`` subscriber processes (bench/worker.py) and
    ``n_pubs`` ShardPublisher processes."""

    def __init__(self, n_subs: int, n_pubs: int) -> None:
        ctx = mp.get_context("spawn")
        self.subs, self.pubs, self.procs = [], [], []
        for role in ["sub"] * n_subs + ["pub"] * n_pubs:
            a, b = ctx.Pipe()
            p = ctx.Process(target=generator_main, args=(b, role), daemon=True)
            p.start()
            (self.subs if role == "sub" else self.pubs).append(a)
            self.procs.append(p)
        self.pids = [p.pid for p in self.procs]

    def pubs_all(self, op: str, per_worker: list[dict] | None = None, **kw) -> list:
        for i, c in enumerate(self.pubs):
            self._call(c, op, **kw, **(per_worker[i] if per_worker else {}))
        return [self._recv(c) for c in self.pubs]

    def close(self) -> None:
        for c in [*self.subs, *self.pubs]:
            with contextlib.suppress(EOFError, OSError, BrokenPipeError):
                c.send({"op": "exit"})
                c.recv()
        for p in self.procs:
            p.join(3)
            if p.is_alive():
                p.kill()


# ------------------------------------------------------------------------ connections


def classify_clients(clients: list[dict]) -> dict[str, int]:
    """The service's connections on one node by kind (the bench's own are named bench-*)."""
    out = {"normal": 0, "sharded_pubsub": 0, "classic_pubsub": 0}
    for c in clients:
        if str(c.get("name", "")).startswith("bench"):
            continue
        ssub = int(c.get("ssub", 0) or 0)
        classic = int(c.get("sub", 0) or 0) + int(c.get("psub", 0) or 0)
        if ssub:
            out["sharded_pubsub"] += 1
        elif classic or "P" in str(c.get("flags", "")):
            out["classic_pubsub"] += 1
        else:
            out["normal"] += 1
    return out


class ConnectionSampler:
    """CLIENT LIST on every node once a second; keeps the peak of each kind per node."""

    def __init__(self, topo: Topology, interval_s: float = 1.0) -> None:
        self.topo = topo
        self.interval_s = interval_s
        self.clients = [
            redis_py.Redis(host="127.0.0.1", port=n.port, socket_timeout=5, client_name=PROBE_NAME)
            for n in topo.nodes
        ]
        self.peak = [{"normal": 0, "sharded_pubsub": 0, "classic_pubsub": 0} for _ in topo.nodes]
        # The service's connections at each node's peak of normal ones (addr, age, cmd).
        self.peak_detail: list[list[dict]] = [[] for _ in topo.nodes]
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> list[dict[str, int]]:
        return [classify_clients(c.client_list()) for c in self.clients]

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(redis_py.RedisError):
                for i, c in enumerate(self.clients):
                    raw = c.client_list()
                    current = classify_clients(raw)
                    peak = self.peak[i]
                    if current["normal"] > peak["normal"]:
                        self.peak_detail[i] = [
                            {
                                k: x.get(k)
                                for k in (
                                    "addr",
                                    "age",
                                    "idle",
                                    "cmd",
                                    "flags",
                                    "ssub",
                                    "sub",
                                    "lib-name",
                                )
                            }
                            for x in raw
                            if not str(x.get("name", "")).startswith("bench")
                        ]
                    for k, v in current.items():
                        peak[k] = max(peak[k], v)
                self.samples += 1
            self._stop.wait(self.interval_s)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def calls(self) -> list[int]:
        """SPUBLISH + PUBLISH calls each node has served so far."""
        out = []
        for c in self.clients:
            stats = c.info("commandstats")
            out.append(
                sum(
                    int(stats.get(f"cmdstat_{cmd}", {}).get("calls", 0))
                    for cmd in ("spublish", "publish")
                )
            )
        return out

    def close(self) -> None:
        for c in self.clients:
            c.close()


def sizing(cluster: bool, conns: list[dict[str, int]], max_connections: int, detail=None) -> dict:
    """The README's formula against what the nodes saw, as totals per node (a
    pub/sub connection caught while it connects has sent no SSUBSCRIBE yet and
    looks like a normal one). Standalone: <= N + 1; Cluster: <= N + 1 per
    primary, plus one control connection on one node."""
    n = max_connections
    totals = [c["normal"] + c["sharded_pubsub"] + c["classic_pubsub"] for c in conns]
    if not cluster:
        return {"rule": f"<= N + 1 = {n + 1}", "totals": totals, "holds": totals[0] <= n + 1}
    control = sum(c["classic_pubsub"] for c in conns)
    over = [t - c["classic_pubsub"] - (n + 1) for t, c in zip(totals, conns, strict=True)]
    why = []
    for i, extra in enumerate(over):
        if extra <= 0 or not detail:
            continue
        if any(x.get("cmd") == "cluster|slots" for x in detail[i]):
            why.append(f"node {i + 1}: redis-py's CLUSTER SLOTS connection to its startup node")
        fresh = sum(1 for x in detail[i] if x.get("cmd") == "NULL")
        if fresh:
            why.append(f"node {i + 1}: {fresh} connection(s) caught before a first command")
    return {
        "rule": f"<= N + 1 = {n + 1} per primary, + 1 control on one node",
        "totals": totals,
        "over": over,
        "why": why,
        "holds": control <= 1 and all(x <= 0 for x in over),
    }


# ------------------------------------------------------------------------------ steps


def redis_errors(port: int) -> dict[str, float]:
    """`notify_redis_errors_total` by operation, from the service's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("notify_redis_errors_total{"):
            labels, value = line.rsplit(" ", 1)
            out[labels[len("notify_redis_errors_total") :]] = float(value)
    return out


def wait_ready(port: int, timeout_s: float = 30) -> None:
    t_end = time.monotonic() + timeout_s
    while time.monotonic() < t_end:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"notify serve on {port} not ready after {timeout_s}s")


def partition(chans: list[int], n: int) -> list[list[int]]:
    """Patient i always on publisher i % n (its events keep their order)."""
    return [[c for c in chans if c % n == k] for k in range(n)]


def barrier(h: ShardHarness, timeout_s: float = 30) -> int:
    """Seq-0 probes until every open stream has received one."""
    t_end = time.monotonic() + timeout_s
    while True:
        unready: set[int] = set()
        for r in h.subs_all("unready"):
            unready.update(r)
        if not unready or time.monotonic() > t_end:
            return len(unready)
        parts = partition(sorted(unready), len(h.pubs))
        h.pubs_all("probe", [{"chans": p} for p in parts])
        time.sleep(0.25)


def snapshot(h: ShardHarness, peer: peers.Peer, topo: Topology, sampler: ConnectionSampler):
    return {
        "t": time.monotonic(),
        "service": peer.cpu_s(),
        "gen": h.gen_cpu_s(),
        "nodes": topo.cpu_s(),
        "calls": sampler.calls(),
    }


def step(
    h: ShardHarness,
    peer: peers.Peer,
    topo: Topology,
    sampler: ConnectionSampler,
    owner: list[int],
    n_patients: int,
    rate: float,
    duration_s: float,
    drain_max_s: float = 8.0,
) -> dict:
    n_pubs = len(h.pubs)
    h.subs_all("reset")
    s0 = snapshot(h, peer, topo, sampler)
    specs = [
        {"spec": {"channels": part, "rate": rate / n_pubs, "duration_s": duration_s}}
        for part in partition(list(range(n_patients)), n_pubs)
    ]
    pubs = h.pubs_all("publish", specs)
    expected: dict[int, int] = {}
    for r in pubs:
        expected.update(r["expected"])
    exp_total = sum(expected.values())
    t_end = time.monotonic() + drain_max_s
    last, since = -1, time.monotonic()
    while time.monotonic() < t_end:
        got = sum(r["got_total"] for r in h.subs_all("stats", detail=False))
        if got >= exp_total:
            break
        if got != last:
            last, since = got, time.monotonic()
        elif time.monotonic() - since > 1.5:
            break
        time.sleep(0.05)
    s1 = snapshot(h, peer, topo, sampler)
    stats = h.subs_all("stats", detail=True)
    by_chan: dict[int, list[int]] = {}
    for r in stats:
        for c, gots in r["per_chan_got"].items():
            by_chan.setdefault(int(c), []).extend(gots)
    lost = delivered = 0
    per_shard = [0] * len(topo.nodes)
    for c, gots in by_chan.items():
        # One live stream per patient (a refused attempt, closed with 0, may sit
        # in another subscriber process than the retry that opened).
        lost += max(0, expected.get(c, 0) - max(gots))
        delivered += sum(gots)
        per_shard[owner[c]] += sum(gots)
    # Patients with no stream at all count as lost too.
    lost += sum(e for c, e in expected.items() if c not in by_chan)
    short = sorted(c for c, gots in by_chan.items() if max(gots) < expected.get(c, 0))
    dups = sum(r["dups_total"] for r in stats)
    lat = array("q")
    for r in stats:
        lat.frombytes(r["lat"])
    summary = lat_summary(lat)
    dt = s1["t"] - s0["t"]
    sent = sum(r["sent"] for r in pubs)
    pub_elapsed = max(r["elapsed_s"] for r in pubs)
    errors = h.pubs_all("errors")
    p99 = summary["p99"]
    return {
        "rate": rate,
        "duration_s": duration_s,
        "published": sent,
        "achieved_rate": sent / pub_elapsed if pub_elapsed > 0 else None,
        "expected": exp_total,
        "delivered": delivered,
        "lost": lost,
        "dups": dups,
        "closed_by_server": sum(r["closed_unexpected"] for r in stats),
        "patients_short": {str(c): [by_chan[c], expected.get(c, 0)] for c in short[:20]},
        "live_streams": sum(r["live"] for r in stats),
        "lat_ms": summary,
        "window_s": dt,
        "service_cpu_pct": 100 * (s1["service"] - s0["service"]) / dt,
        "gen_cpu_pct": 100 * (s1["gen"] - s0["gen"]) / dt,
        "redis_cpu_pct": [
            100 * (b - a) / dt for a, b in zip(s0["nodes"], s1["nodes"], strict=True)
        ],
        "redis_cpu_s": [b - a for a, b in zip(s0["nodes"], s1["nodes"], strict=True)],
        "delivered_per_shard": per_shard,
        "publish_calls_per_node": [b - a for a, b in zip(s0["calls"], s1["calls"], strict=True)],
        "publish_errors": sum(e["errors"] for e in errors),
        "publish_error_sample": next((e["first"] for e in errors if e["first"]), ""),
        "ok": bool(lost == 0 and dups == 0 and p99 is not None and p99 <= P99_OK_MS),
        "pub_limited": bool(pub_elapsed > 0 and sent / pub_elapsed < 0.9 * rate),
    }


def log_step(label: str, st: dict) -> None:
    cpu = "/".join(f"{v:.0f}" for v in st["redis_cpu_pct"])
    log(
        f"  {label} {st['rate']:>7.0f} ev/s: p50 {fmt(st['lat_ms']['p50'])} p99 "
        f"{fmt(st['lat_ms']['p99'])} ms, lost {st['lost']}, dup {st['dups']}, service "
        f"{st['service_cpu_pct']:.0f}% gen {st['gen_cpu_pct']:.0f}% redis {cpu}%, per shard "
        f"{st['delivered_per_shard']}" + (" PUB-LIMITED" if st["pub_limited"] else "")
    )


def reopen_ended(h: ShardHarness, peer: peers.Peer, chans: list[int], a, rounds: int = 10) -> list:
    """Patients without a live stream (refused, or ended by the server after it
    opened): open again, as EventSource does after `retry:`; then the barrier."""
    retries = []
    for _ in range(rounds):
        live = set().union(*h.subs_all("live_chans"))
        todo = [c for c in chans if c not in live]
        if not todo:
            break
        time.sleep(0.5)
        r = open_streams(h, peer, "sse", todo, a.concurrency, timeout_s=90)  # type: ignore[arg-type]
        retries.append({"tried": len(todo), "opened": r["opened"], "refused": r["refused"]})
        log(f"  again: {r['opened']}/{len(todo)} opened, refused {r['refused']}")
    if retries:
        barrier(h)
    return retries


def run_topology(name: str, h: ShardHarness, a: argparse.Namespace, workdir: Path) -> dict:
    topo = Topology(name)
    out: dict = {"topology": name, "primaries": topo.primaries, "cluster": topo.cluster}
    peer = sampler = None
    try:
        topo.start()
        out["ports"] = [n.port for n in topo.nodes]
        out["redis_pids"] = [topo.pid(i) for i in range(len(topo.nodes))]
        out["slot_ranges"] = [list(r) for r in topo.ranges]
        owner = [topo.owner(i) for i in range(a.patients)]
        out["patients_per_shard"] = [owner.count(i) for i in range(len(topo.nodes))]
        sampler = ConnectionSampler(topo)
        sampler.start()
        env = {
            "NOTIFY_REDIS_MODE": "cluster" if topo.cluster else "standalone",
            "NOTIFY_REDIS_URL": topo.seed_url,
            "NOTIFY_REDIS_MAX_CONNECTIONS": str(a.max_connections),
        }
        out["service_env"] = env
        peer = peers.start_ours(
            types.SimpleNamespace(url=topo.seed_url),  # type: ignore[arg-type]
            workdir,
            heartbeat_s=15,
            env_overrides=env,
            log_name=f"ours-{name}.log",
        )
        wait_ready(peer.port)
        log(f"== {name}: nodes {out['ports']}, notify serve :{peer.port} (pid {peer.proc.pid})")
        out["connections_before_streams"] = sampler.now()
        h.pubs_all(
            "connect",
            target={
                "nodes": [["127.0.0.1", n.port] for n in topo.nodes],
                "owner": owner,
                "command": "SPUBLISH" if topo.cluster else "PUBLISH",
            },
        )
        chans = list(range(a.patients))
        t_open = time.monotonic()
        o = open_streams(h, peer, "sse", chans, a.concurrency, timeout_s=90)  # type: ignore[arg-type]
        log(
            f"  {o['opened']}/{a.patients} streams in {o['elapsed_s']:.1f} s "
            f"(refused {o['refused']}, failed {o['failed']} {o['fail_reasons'] or ''})"
        )
        out["open"] = {k: v for k, v in o.items() if k != "connect_lat_ms"}
        out["open"]["connect_lat_ms"] = o["connect_lat_ms"]
        # Refused (the retry-able answer) or failed: come back, as EventSource does.
        out["open"]["retries"] = reopen_ended(h, peer, chans, a)
        out["open"]["live"] = len(set().union(*h.subs_all("live_chans")))
        out["open"]["all_live_s"] = time.monotonic() - t_open
        out["open"]["redis_errors"] = redis_errors(peer.port)
        missing = barrier(h)
        log(
            f"  {out['open']['live']} live streams; {missing} without a probe after the "
            f"barrier; service's Redis errors so far {out['open']['redis_errors']}"
        )
        out["unready_after_barrier"] = missing
        out["connections_streams_open"] = sampler.now()

        out["reopened_before_step"] = []
        out["reopened_before_step"].append(reopen_ended(h, peer, chans, a))
        fixed = step(h, peer, topo, sampler, owner, a.patients, a.fixed_rate, a.duration_s)
        log_step(f"{name} fixed", fixed)
        out["fixed"] = fixed
        steps = []
        best = None
        first_fail = None
        rate = a.fixed_rate * 2
        while rate <= a.max_rate:
            time.sleep(0.3)
            out["reopened_before_step"].append(reopen_ended(h, peer, chans, a))
            st = step(h, peer, topo, sampler, owner, a.patients, rate, a.duration_s)
            log_step(name, st)
            steps.append(st)
            if st["pub_limited"] or not st["ok"]:
                first_fail = rate
                break
            best = st
            rate *= 2
        if fixed["ok"] and best is None:
            best = fixed
        live = sum(r["live"] for r in h.subs_all("stats", detail=False))
        if best is not None and first_fail is not None and live == a.patients:
            settle(h)
            out["reopened_before_step"].append(reopen_ended(h, peer, chans, a))
            mid = round((best["rate"] * first_fail) ** 0.5)
            st = step(h, peer, topo, sampler, owner, a.patients, mid, a.duration_s)
            st["bisect"] = True
            log_step(f"{name} bisect", st)
            steps.append(st)
            if st["ok"] and not st["pub_limited"]:
                best = st
        out["ladder"] = steps
        out["best"] = best
        out["first_fail"] = first_fail
        out["live_streams_at_end"] = live
        out["connections_end"] = sampler.now()
        sampler.stop()
        out["connections_peak"] = sampler.peak
        out["connections_peak_detail"] = sampler.peak_detail
        out["connection_samples"] = sampler.samples
        out["sizing"] = sizing(topo.cluster, sampler.peak, a.max_connections, sampler.peak_detail)
        log(
            f"  connections (peak, per node): {sampler.peak}; sizing holds: {out['sizing']['holds']}"
        )
        out["service_alive"] = peer.alive()
        close_streams(h)
    except Exception as exc:  # keep the other topologies' results
        log(f"  {name} failed: {exc}\n{traceback.format_exc()}")
        if peer is not None:
            log(f"--- server log tail:\n{peer.log_tail()}")
        out["error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        with contextlib.suppress(Exception):
            close_streams(h)
    finally:
        if sampler is not None:
            sampler.stop()
            sampler.close()
        if peer is not None:
            peer.stop()
        topo.stop()
    return out


# ----------------------------------------------------------------------------- report


def _n(v, nd=0) -> str:
    if v is None:
        return "-"
    return f"{v:,.{nd}f}"


def _per_node(values, nd=0, suffix="") -> str:
    return " / ".join(f"{_n(v, nd)}{suffix}" for v in values)


def _conns(conns: list[dict[str, int]] | None, cluster: bool) -> str:
    if not conns:
        return "-"
    if not cluster:
        c = conns[0]
        return f"{c['normal']} normal + {c['classic_pubsub'] + c['sharded_pubsub']} pub/sub"
    parts = []
    for c in conns:
        s = f"{c['normal']} + {c['sharded_pubsub']} spubsub"
        if c["classic_pubsub"]:
            s += f" + {c['classic_pubsub']} control"
        parts.append(s)
    return " / ".join(parts)


def _pair(r: dict, key: str) -> str:
    best = f"{r['best'][key]:.0f} %" if r.get("best") else "-"
    return f"{r['fixed'][key]:.0f} % / {best}"


def _sizing_cell(s: dict) -> str:
    out = ("yes" if s["holds"] else "**no**") + f" ({s['rule']}; totals {_per_node(s['totals'])})"
    if s.get("why"):
        out += ": " + "; ".join(s["why"])
    return out


def render(results: dict) -> str:
    meta = results["meta"]
    runs = results["runs"]
    names = [n for n in ALL_TOPOLOGIES if n in runs]
    heads = {
        "standalone": "standalone (1 redis-server)",
        "cluster-1": "1 shard",
        "cluster-3": "3 shards",
    }
    fixed_rate = meta["fixed_rate"]

    def row(label: str, fn) -> str:
        cells = []
        for n in names:
            r = runs[n]
            try:
                cells.append("error: " + r["error"] if "error" in r and "fixed" not in r else fn(r))
            except (KeyError, TypeError, IndexError):
                cells.append("-")
        return f"| {label} | " + " | ".join(cells) + " |"

    def best_rate(r: dict) -> str:
        b = r.get("best")
        if b is None:
            return f"< {_n(fixed_rate)}"
        prefix = "≥ " if r.get("first_fail") is None else ""
        return prefix + _n(b["rate"])

    lines = [
        "# Redis Cluster: 1 vs 3 shards (unicast, one service process)",
        "",
        f"Command: `{meta['command']}`; {meta['started']}; wall time {meta['wall_s']:.0f} s. "
        f"{meta['patients']:,} patients, one SSE stream each, into ONE `notify serve`; "
        f"{meta['publishers']} publisher processes (raw `SPUBLISH` to the slot's owner, "
        f"`PUBLISH` in standalone) + {meta['subscribers']} subscriber processes; steps of "
        f"{meta['duration_s']:g} s. Machine: {meta['machine'].get('cpus', '?')} cores, "
        f"load average {meta['loadavg_before']} before the run.",
        "",
        "| | " + " | ".join(heads[n] for n in names) + " |",
        "|---|" + "---|" * len(names),
        row(
            "streams: opened at the first try (refused) / live after retries, without a probe",
            lambda r: (
                f"{r['open']['opened']:,} ({r['open']['refused']:,}) / "
                f"{r['open']['live']:,}, {r['unready_after_barrier']}"
            ),
        ),
        row(
            "opens answered HTTP 500 / streams reopened before the steps (ended by the server)",
            lambda r: (
                f"{r['open']['fail_reasons'].get('http 500', 0):,} / "
                + _n(sum(x["tried"] for rr in r.get("reopened_before_step", []) for x in rr))
            ),
        ),
        row("patients per shard (slot owner)", lambda r: _per_node(r["patients_per_shard"])),
        row(
            "max events/s delivered (lost 0, dup 0, p99 ≤ 250 ms)",
            best_rate,
        ),
        row("p99 at the max rate (ms)", lambda r: _n(r["best"]["lat_ms"]["p99"], 1)),
        row(
            f"p99 at {_n(fixed_rate)} events/s (ms); p50",
            lambda r: (
                f"{_n(r['fixed']['lat_ms']['p99'], 1)}; {_n(r['fixed']['lat_ms']['p50'], 1)}"
                + ("" if r["fixed"]["ok"] else " (FAILED)")
            ),
        ),
        row(
            f"Redis CPU per shard primary at {_n(fixed_rate)} events/s (% of a core)",
            lambda r: _per_node(r["fixed"]["redis_cpu_pct"], 1, " %"),
        ),
        row(
            "Redis CPU per shard primary at the max rate (% of a core)",
            lambda r: _per_node(r["best"]["redis_cpu_pct"], 1, " %"),
        ),
        row(
            f"events delivered per shard at {_n(fixed_rate)} events/s",
            lambda r: _per_node(r["fixed"]["delivered_per_shard"]),
        ),
        row(
            "(S)PUBLISH calls per node, Redis's own count",
            lambda r: _per_node(r["fixed"]["publish_calls_per_node"]),
        ),
        row(
            f"service CPU at {_n(fixed_rate)} / at the max rate",
            lambda r: _pair(r, "service_cpu_pct"),
        ),
        row(
            f"generator CPU (all processes) at {_n(fixed_rate)} / at the max rate",
            lambda r: _pair(r, "gen_cpu_pct"),
        ),
        row(
            "service's Redis connections per node, peak (normal + pub/sub)",
            lambda r: _conns(r["connections_peak"], r["cluster"]),
        ),
        row(
            "… at the end (streams still open)",
            lambda r: _conns(r["connections_end"], r["cluster"]),
        ),
        row(
            f"README sizing (N = NOTIFY_REDIS_MAX_CONNECTIONS = {meta['max_connections']}) "
            "at the peak: holds?",
            lambda r: _sizing_cell(
                sizing(
                    r["cluster"],
                    r["connections_peak"],
                    meta["max_connections"],
                    r.get("connections_peak_detail"),
                )
            ),
        ),
        "",
        "Notes:",
        "",
        "- This machine has **2 cores**, shared by the service process, every Redis node, "
        "the generator's processes and other benchmarks running at the same time: absolute "
        "figures drift between runs; compare the columns of one run.",
        "- Total throughput is bounded by the ONE service process (and the generator) on "
        "those 2 cores, not by Redis: a second shard cannot raise it here, and the columns' "
        "max rates differ by the machine's noise. What the CPU-per-shard row shows is the "
        "**load spread**: with 3 primaries each owns a third of the slots, so each serves a "
        "third of the patients' SPUBLISHes and their sharded-pub/sub delivery to the "
        "service, at about a third of the one primary's CPU (per-node figures in order of "
        "the nodes; slots split evenly). That is what lets a deployment with many service "
        "processes grow past one Redis's pub/sub.",
        "- Redis CPU = utime + stime of each redis-server from /proc/<pid>/stat over the "
        "step (publishing, delivery and the drain), as % of one core.",
        "- Events per shard: events the streams received, grouped by the node that owns "
        "each patient's channel slot; the next row is each node's own "
        "`INFO commandstats` count of `spublish` (+ `publish`) calls during the step.",
        "- Connections: `CLIENT LIST` on every node once a second during the run "
        "(the bench's own connections are named `bench-*` and left out). "
        "`spubsub` = a connection with sharded subscriptions, `control` = the classic "
        "pub/sub connection for `notify:control`, which is on one node only.",
        "",
    ]
    for n in names:
        r = runs[n]
        if "fixed" not in r:
            continue
        lines += [
            f"### {heads[n]}: steps",
            "",
            "| events/s | achieved | p50 ms | p99 ms | max ms | lost | dup | service CPU | "
            "generator CPU | Redis CPU per node | delivered per shard | pass |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for st in [r["fixed"], *r.get("ladder", [])]:
            lines.append(
                f"| {_n(st['rate'])}{' (bisect)' if st.get('bisect') else ''} | "
                f"{_n(st['achieved_rate'])} | {_n(st['lat_ms']['p50'], 1)} | "
                f"{_n(st['lat_ms']['p99'], 1)} | {_n(st['lat_ms']['max'], 1)} | {st['lost']} | "
                f"{st['dups']} | {st['service_cpu_pct']:.0f} % | {st['gen_cpu_pct']:.0f} % | "
                f"{_per_node(st['redis_cpu_pct'], 1, ' %')} | "
                f"{_per_node(st['delivered_per_shard'])} | "
                f"{'yes' if st['ok'] and not st['pub_limited'] else 'no'}"
                f"{' (publisher-limited)' if st['pub_limited'] else ''}"
                f"{' (' + str(st['publish_errors']) + ' publish errors)' if st['publish_errors'] else ''} |"
            )
        lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------------------- main


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench shards",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--patients", type=int, default=10_000)
    ap.add_argument("--publishers", type=int, default=3, help="publisher processes")
    ap.add_argument("--subs", type=int, default=2, help="subscriber processes")
    ap.add_argument("--duration-s", type=float, default=4.0, help="publishing time per step")
    ap.add_argument("--fixed-rate", type=float, default=2000.0, help="events/s of the fixed step")
    ap.add_argument("--max-rate", type=float, default=64000.0, help="top of the ladder")
    ap.add_argument("--concurrency", type=int, default=200, help="stream opens in flight")
    ap.add_argument("--max-connections", type=int, default=20, help="NOTIFY_REDIS_MAX_CONNECTIONS")
    ap.add_argument("--topologies", default=",".join(ALL_TOPOLOGIES))
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--render", metavar="JSON", help="print the report of a saved run")
    a = ap.parse_args(argv)
    if a.render:
        print(render(json.loads(Path(a.render).read_text())))
        return 0
    wanted = [t for t in a.topologies.split(",") if t]
    if set(wanted) - set(ALL_TOPOLOGIES):
        ap.error(f"topologies are {ALL_TOPOLOGIES}")
    workdir = peers.make_workdir()
    t0 = time.monotonic()
    results: dict = {
        "meta": {
            "command": "python -m bench shards" + ("" if not argv else " " + " ".join(argv)),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "patients": a.patients,
            "publishers": a.publishers,
            "subscribers": a.subs,
            "duration_s": a.duration_s,
            "fixed_rate": a.fixed_rate,
            "max_connections": a.max_connections,
            "machine": {**report.machine(), "cpus": os.cpu_count()},
            "loadavg_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "redis": redis_version(),
        },
        "runs": {},
    }
    h = ShardHarness(a.subs, a.publishers)
    try:
        for name in wanted:
            results["runs"][name] = run_topology(name, h, a, workdir)
    except KeyboardInterrupt:
        log("bench shards: interrupted; reporting what was measured")
    finally:
        h.close()
    results["meta"]["wall_s"] = time.monotonic() - t0
    md = render(results)
    print(md)
    if not a.no_write:
        os.makedirs(a.out, exist_ok=True)
        base = os.path.join(a.out, f"{time.strftime('%Y%m%d-%H%M%S')}-shards")
        Path(base + ".md").write_text(md)
        Path(base + ".json").write_text(json.dumps(results, indent=1, default=str))
        Path(a.out, "latest-shards.md").write_text(md)
        log(f"bench shards: wrote {base}.md (+ .json, latest-shards.md)")
    log(f"bench shards: logs in {workdir}")
    failed = [n for n, r in results["runs"].items() if "error" in r]
    return 1 if failed else 0


def redis_version() -> str:
    import subprocess

    from tests.support.redis_server import find_server_binary

    out = subprocess.run([find_server_binary(), "--version"], capture_output=True, text=True)
    return out.stdout.strip()
