"""Scenarios: what is measured, against one peer at a time, by the same generator."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from array import array
from dataclasses import dataclass

from bench import procstat
from bench.peers import JWT_SECRET, Peer, Redis
from bench.worker import mint_token, worker_main

P99_OK_MS = 250.0
P99_TIGHT_MS = 50.0
# Generator CPU (all its processes, % of one core) from which a failing step is
# treated as limited by the machine rather than by the peer alone.
GEN_BOUND_CPU_PCT = 80.0


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    k = min(len(values) - 1, max(0, round(p / 100.0 * (len(values) - 1))))
    return values[k]


def lat_summary(raw: array) -> dict:
    vals = sorted(raw)
    ms = 1e6
    if not vals:
        return {"n": 0, "p50": None, "p90": None, "p99": None, "max": None}
    return {
        "n": len(vals),
        "p50": pct(vals, 50) / ms,
        "p90": pct(vals, 90) / ms,
        "p99": pct(vals, 99) / ms,
        "max": vals[-1] / ms,
    }


@dataclass
class Profile:
    name: str
    idle_streams: int
    idle_window_s: float
    heartbeat_s: float
    storm_clients: int
    storm_history: int
    unicast_patients: tuple[int, ...]
    unicast_start: float
    broadcast_streams: int
    broadcast_start: float
    low_rate: float
    low_rate_s: float
    step_s: float
    factor: float
    bisect: bool
    ws_unicast_patients: int
    connect_concurrency: int
    storm_concurrency: int
    max_broadcast_rate: float = 4000
    max_unicast_rate: float = 64000


QUICK = Profile(
    name="quick",
    idle_streams=1000,
    idle_window_s=4,
    heartbeat_s=2,
    storm_clients=1000,
    storm_history=3,
    unicast_patients=(1000,),
    unicast_start=1000,
    broadcast_streams=1000,
    broadcast_start=8,
    low_rate=2,
    low_rate_s=2,
    step_s=1.0,
    factor=2.0,
    bisect=False,
    ws_unicast_patients=1000,
    connect_concurrency=200,
    storm_concurrency=1000,
    max_broadcast_rate=1024,
    max_unicast_rate=32000,
)

FULL = Profile(
    name="full",
    idle_streams=10000,
    idle_window_s=20,
    heartbeat_s=5,
    storm_clients=10000,
    storm_history=3,
    unicast_patients=(1000, 10000),
    unicast_start=250,
    broadcast_streams=1000,
    broadcast_start=4,
    low_rate=2,
    low_rate_s=10,
    step_s=4,
    factor=2.0,
    bisect=True,
    ws_unicast_patients=1000,
    connect_concurrency=500,
    storm_concurrency=1000,
)


class Harness:
    """The load generator: ``n_subs`` subscriber processes and one publisher process."""

    def __init__(self, n_subs: int = 2):
        ctx = mp.get_context("spawn")
        self.subs = []
        self.procs = []
        for _ in range(n_subs):
            a, b = ctx.Pipe()
            p = ctx.Process(target=worker_main, args=(b, "sub"), daemon=True)
            p.start()
            self.subs.append(a)
            self.procs.append(p)
        a, b = ctx.Pipe()
        p = ctx.Process(target=worker_main, args=(b, "pub"), daemon=True)
        p.start()
        self.pub = a
        self.procs.append(p)
        self.pids = [p.pid for p in self.procs]

    def _call(self, conn, op: str, **kw):
        conn.send({"op": op, **kw})
        return conn

    def _recv(self, conn):
        r = conn.recv()
        if isinstance(r, dict) and "error" in r:
            raise RuntimeError(r["error"] + "\n" + r.get("trace", ""))
        return r

    def subs_all(self, op: str, per_worker: list[dict] | None = None, **kw) -> list:
        for i, c in enumerate(self.subs):
            extra = per_worker[i] if per_worker else {}
            self._call(c, op, **kw, **extra)
        return [self._recv(c) for c in self.subs]

    def pub_call(self, op: str, **kw):
        self._call(self.pub, op, **kw)
        return self._recv(self.pub)

    def gen_cpu_s(self) -> float:
        return sum(procstat.cpu_s(pid) for pid in self.pids)

    def close(self):
        for c in [*self.subs, self.pub]:
            try:
                c.send({"op": "exit"})
                c.recv()
            except (EOFError, OSError, BrokenPipeError):
                pass
        for p in self.procs:
            p.join(3)
            if p.is_alive():
                p.kill()


# ------------------------------------------------------------------------------ helpers


def target_spec(peer: Peer, redis: Redis) -> dict:
    return {
        "publish": peer.publish,
        "host": "127.0.0.1",
        "port": peer.port,
        "redis_host": "127.0.0.1",
        "redis_port": redis.port,
        "http_conns": 2,
    }


def open_streams(
    h: Harness,
    peer: Peer,
    kind: str,
    chans: list[int],
    concurrency: int,
    last_ids: dict | None = None,
    base_seq: int = 0,
    timeout_s: float = 60,
) -> dict:
    n = len(h.subs)
    per = []
    for w in range(n):
        part = chans[w::n]
        spec = {
            "host": "127.0.0.1",
            "port": peer.port,
            "kind": kind,
            "path": peer.sse_path if kind == "sse" else peer.ws_path,
            "secret": JWT_SECRET if peer.auth else None,
            "concurrency": max(1, concurrency // n),
            "timeout_s": timeout_s,
            "streams": part,
            "ws_subscribe": peer.ws_subscribe if kind == "ws" else None,
            "base_seq": base_seq,
        }
        if last_ids:
            spec["last_event_ids"] = {str(c): last_ids[c] for c in part if c in last_ids}
        per.append({"spec": spec})
    t_cpu, cpu0 = time.monotonic(), peer.cpu_s()
    res = h.subs_all("open", per)
    server_cpu_pct = 100 * (peer.cpu_s() - cpu0) / max(1e-9, time.monotonic() - t_cpu)
    lat = array("q")
    for r in res:
        lat.frombytes(r["connect_lat"])
    reasons: dict[str, int] = {}
    for r in res:
        for k, v in r["fail_reasons"].items():
            reasons[k] = reasons.get(k, 0) + v
    elapsed = max(r["elapsed_s"] for r in res)
    opened = sum(r["opened"] for r in res)
    return {
        "requested": len(chans),
        "opened": opened,
        "refused": sum(r["refused"] for r in res),
        "failed": sum(r["failed"] for r in res),
        "fail_reasons": reasons,
        "elapsed_s": elapsed,
        "connect_rate": opened / elapsed if elapsed > 0 else None,
        "connect_lat_ms": lat_summary(lat),
        "server_cpu_pct_while_connecting": server_cpu_pct,
    }


def barrier(h: Harness, timeout_s: float = 20) -> int:
    """Publish readiness probes (seq 0) until every open stream has seen one."""
    t_end = time.monotonic() + timeout_s
    while True:
        unready = set()
        for r in h.subs_all("unready"):
            unready.update(r)
        if not unready or time.monotonic() > t_end:
            return len(unready)
        h.pub_call("probe", chans=sorted(unready))
        time.sleep(0.25)


def close_streams(h: Harness) -> None:
    h.subs_all("close")


def cpu_snapshot(h: Harness, peer: Peer, redis: Redis) -> tuple[float, float, float, float]:
    return time.monotonic(), peer.cpu_s(), h.gen_cpu_s(), redis.cpu_s()


def cpu_delta(a, b) -> dict:
    dt = b[0] - a[0]
    return {
        "server_cpu_pct": 100 * (b[1] - a[1]) / dt,
        "gen_cpu_pct": 100 * (b[2] - a[2]) / dt,
        "redis_cpu_pct": 100 * (b[3] - a[3]) / dt,
    }


def measure_step(
    h: Harness,
    peer: Peer,
    redis: Redis,
    chans: list[int],
    streams_per_chan: dict[int, int],
    rate: float,
    duration: float,
    fanout: bool = False,
    drain_max_s: float = 6.0,
) -> dict:
    h.subs_all("reset", track_fanout=fanout)
    s0 = cpu_snapshot(h, peer, redis)
    pub = h.pub_call("publish", spec={"channels": chans, "rate": rate, "duration_s": duration})
    expected = pub["expected"]
    exp_total = sum(expected.get(c, 0) * k for c, k in streams_per_chan.items())
    t_end = time.monotonic() + drain_max_s
    last_total, last_change = -1, time.monotonic()
    while time.monotonic() < t_end:
        got = sum(r["got_total"] for r in h.subs_all("stats", detail=False))
        if got >= exp_total:
            break
        if got != last_total:
            last_total, last_change = got, time.monotonic()
        elif time.monotonic() - last_change > 1.5:
            break
        time.sleep(0.05)
    s1 = cpu_snapshot(h, peer, redis)
    stats = h.subs_all("stats", detail=True)
    lost = 0
    got_total = 0
    for r in stats:
        for c, gots in r["per_chan_got"].items():
            e = expected.get(c, 0)
            for g in gots:
                lost += max(0, e - g)
                got_total += g
    dups = sum(r["dups_total"] for r in stats)
    lat = array("q")
    fan: dict[int, int] = {}
    for r in stats:
        lat.frombytes(r["lat"])
        for seq, v in r["fanout"].items():
            if v > fan.get(seq, 0):
                fan[seq] = v
    summary = lat_summary(lat)
    out = {
        "rate": rate,
        "duration_s": duration,
        "published": pub["sent"],
        "achieved_rate": pub["achieved_rate"],
        "pub_stalled_s": pub["stalled_s"],
        "expected_deliveries": exp_total,
        "delivered": got_total,
        "lost": lost,
        "dups": dups,
        "closed_by_server": sum(r["closed_unexpected"] for r in stats),
        "live_streams": sum(r["live"] for r in stats),
        "lat_ms": summary,
        **cpu_delta(s0, s1),
    }
    if fanout:
        out["fanout_ms"] = lat_summary(array("q", fan.values()))
    p99 = summary["p99"]
    out["ok"] = bool(lost == 0 and dups == 0 and p99 is not None and p99 <= P99_OK_MS)
    out["ok_tight"] = bool(out["ok"] and p99 <= P99_TIGHT_MS)
    out["pub_limited"] = pub["achieved_rate"] < 0.9 * rate
    return out


def settle(h: Harness, quiet_s: float = 0.5, max_s: float = 10.0) -> None:
    """Wait until a backlog left by a failed step has drained (nothing arrives for quiet_s)."""
    t_end = time.monotonic() + max_s
    last, since = -1, time.monotonic()
    while time.monotonic() < t_end:
        got = sum(r["got_total"] for r in h.subs_all("stats", detail=False))
        if got != last:
            last, since = got, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.1)


def reopen_if_needed(h, peer, kind, chans, conc) -> None:
    live = sum(r["live"] for r in h.subs_all("stats", detail=False))
    if live < len(chans):
        close_streams(h)
        time.sleep(0.5)
        open_streams(h, peer, kind, chans, conc)
        barrier(h)


def ladder(
    h: Harness,
    peer: Peer,
    redis: Redis,
    kind: str,
    stream_chans: list[int],
    pub_chans: list[int],
    start: float,
    prof: Profile,
    max_rate: float,
    log,
    label: str,
) -> dict:
    spc: dict[int, int] = {}
    for c in stream_chans:
        spc[c] = spc.get(c, 0) + 1
    steps = []
    best = best_tight = None
    rate = start
    first_fail = None
    gen_bound = False
    while rate <= max_rate:
        st = measure_step(h, peer, redis, pub_chans, spc, rate, prof.step_s)
        steps.append(st)
        log(
            f"  {label} {rate:>8.0f} ev/s: p50 {fmt(st['lat_ms']['p50'])} p99 {fmt(st['lat_ms']['p99'])} ms, "
            f"lost {st['lost']}, dup {st['dups']}, server {st['server_cpu_pct']:.0f}% gen {st['gen_cpu_pct']:.0f}%"
            + (" PUB-LIMITED" if st["pub_limited"] else "")
        )
        if st["pub_limited"]:
            gen_bound = True
            break
        if st["ok"]:
            best = rate
            if st["ok_tight"]:
                best_tight = rate
        else:
            first_fail = rate
            # On 2 shared cores: when the generator itself needed most of a core at the
            # failing step, the peer was not the only limit: its figure is a lower bound.
            if st["gen_cpu_pct"] >= GEN_BOUND_CPU_PCT:
                gen_bound = True
            break
        rate *= prof.factor
        time.sleep(0.2)
    else:
        gen_bound = True  # ran out of ladder: the peer outran the generator's configured ceiling
    if prof.bisect and best is not None and first_fail is not None:
        settle(h)
        reopen_if_needed(h, peer, kind, stream_chans, prof.connect_concurrency)
        mid = (best * first_fail) ** 0.5
        st = measure_step(h, peer, redis, pub_chans, spc, mid, prof.step_s)
        steps.append(st)
        log(
            f"  {label} {mid:>8.0f} ev/s: p99 {fmt(st['lat_ms']['p99'])} ms, lost {st['lost']} (bisect)"
        )
        if st["ok"]:
            best = mid
            if st["ok_tight"] and (best_tight is None or mid > best_tight):
                best_tight = mid
    return {
        "steps": steps,
        "max_rate_ok": best,
        "max_rate_tight": best_tight,
        "first_fail": first_fail,
        "generator_bound": gen_bound,
    }


def fmt(v, nd=1) -> str:
    if v is None:
        return "-"
    return f"{v:.{nd}f}"


# ---------------------------------------------------------------------------- scenarios


def sc_idle(h, peer, redis, prof: Profile, log) -> dict:
    """N idle SSE streams with heartbeats: RSS per stream, CPU, connect rate."""
    time.sleep(0.5)
    memprof = bool(os.environ.get("BENCH_TRACEMALLOC")) and peer.name != "nchan"
    if memprof:
        os.kill(peer.proc.pid, signal.SIGUSR2)
        time.sleep(2)
    rss0 = peer.rss_kb()
    chans = list(range(prof.idle_streams))
    o = open_streams(h, peer, "sse", chans, prof.connect_concurrency)
    log(
        f"  opened {o['opened']}/{o['requested']} in {o['elapsed_s']:.1f}s "
        f"({fmt(o['connect_rate'], 0)}/s, server CPU {o['server_cpu_pct_while_connecting']:.0f}%), "
        f"failed {o['failed']} {o['fail_reasons'] or ''}"
    )
    unready = barrier(h, 20)
    time.sleep(1.0)
    rss1 = peer.rss_kb()
    if memprof:
        out_path = peer.log.with_suffix(".tracemalloc.txt")
        os.kill(peer.proc.pid, signal.SIGUSR2)
        t_end = time.monotonic() + 120
        while not out_path.exists() and time.monotonic() < t_end:
            time.sleep(0.5)
        time.sleep(1)
        log(f"  tracemalloc growth written to {peer.log.with_suffix('.tracemalloc.txt')}")
    pings0 = sum(r["pings"] for r in h.subs_all("stats", detail=False))
    s0 = cpu_snapshot(h, peer, redis)
    time.sleep(prof.idle_window_s)
    s1 = cpu_snapshot(h, peer, redis)
    st = h.subs_all("stats", detail=False)
    pings1 = sum(r["pings"] for r in st)
    live = sum(r["live"] for r in st)
    rss2 = peer.rss_kb()
    cpu = cpu_delta(s0, s1)
    n = max(1, o["opened"])
    res = {
        "requested": prof.idle_streams,
        "opened": o["opened"],
        "live_after_window": live,
        "unready_after_barrier": unready,
        "fail_reasons": o["fail_reasons"],
        "rss_before_kb": rss0,
        "rss_after_kb": rss1,
        "rss_end_kb": rss2,
        "kb_per_stream": (rss1 - rss0) / n,
        "connect_rate": o["connect_rate"],
        "connect_lat_ms": o["connect_lat_ms"],
        "idle_window_s": prof.idle_window_s,
        "heartbeat_s": prof.heartbeat_s,
        "heartbeats_per_stream": (pings1 - pings0) / n,
        "cpu_pct_per_1000_streams": cpu["server_cpu_pct"] * 1000 / n,
        **cpu,
    }
    log(
        f"  RSS {rss0 / 1024:.1f} -> {rss1 / 1024:.1f} MiB = {res['kb_per_stream']:.1f} KB/stream; "
        f"idle CPU {cpu['server_cpu_pct']:.1f}% ({res['cpu_pct_per_1000_streams']:.2f}%/1000 streams); "
        f"heartbeats/stream {res['heartbeats_per_stream']:.1f} in {prof.idle_window_s}s"
    )
    close_streams(h)
    return res


def sc_storm(h, peer, redis, prof: Profile, log) -> dict:
    """All clients reconnect at once with Last-Event-ID and must catch up on missed events."""
    n = prof.storm_clients
    chans = list(range(n))
    per = prof.storm_history
    spec = {"channels": chans, "per_channel": per, "mode": peer.history}
    if peer.history == "ours-http":
        # Our publish path called as a library (as `notify publish` does); falls back to
        # POST /v1/events (the same code behind the API) when the service isn't importable.
        spec["mode"] = "ours-lib"
        spec["redis_url"] = redis.url
        spec["service_token"] = mint_token(
            JWT_SECRET, "svc_bench", role="service", scope="events:publish"
        )
        spec["window"] = 32
    t0 = time.monotonic()
    hist = h.pub_call("history", spec=spec)
    log(
        f"  history: {per} events x {n} patients in {time.monotonic() - t0:.1f}s "
        f"(via {hist.get('via', spec['mode'])}; first ids: {len(hist['first_ids'])}, "
        f"errors {hist.get('errors') or 0})"
    )
    last_ids = hist["first_ids"] or {c: "0-1" for c in chans}  # baseline: ignored anyway
    h.subs_all("reset", record_latency=False, base_seq=1, target_seq=per)
    t_start = time.monotonic_ns()
    o = open_streams(
        h, peer, "sse", chans, prof.storm_concurrency, last_ids=last_ids, base_seq=1, timeout_s=60
    )
    # wait until every stream has caught up (got seq == per) or timeout
    t_end = time.monotonic() + (1.0 if peer.history == "none" else 30)
    while time.monotonic() < t_end:
        st = h.subs_all("stats", detail=False)
        got = sum(r["got_total"] for r in st)
        if got >= o["opened"] * (per - 1):
            break
        time.sleep(0.05)
    st = h.subs_all("stats", detail=True)
    ready = sorted(t for r in st for t in r["ready_ns"])
    caught = sorted(t for r in st for t in r["caught_up_ns"])
    not_caught = n - len(caught)
    res = {
        "clients": n,
        "history_per_patient": per,
        "opened": o["opened"],
        "failed": o["failed"],
        "fail_reasons": o["fail_reasons"],
        "all_streaming_s": (ready[-1] - t_start) / 1e9 if ready and len(ready) >= n else None,
        "streaming_s_p99": (ready[int(0.99 * (len(ready) - 1))] - t_start) / 1e9 if ready else None,
        "all_caught_up_s": (caught[-1] - t_start) / 1e9 if caught and not_caught == 0 else None,
        "caught_up": len(caught),
        "not_caught_up": not_caught,
        "replayed_events": sum(r["got_total"] for r in st),
        "dups": sum(r["dups_total"] for r in st),
        "server_cpu_pct_while_connecting": o["server_cpu_pct_while_connecting"],
        "history_via": hist.get("via", spec["mode"]),
    }
    log(
        f"  {o['opened']}/{n} streaming again after {fmt(res['all_streaming_s'], 2)}s; "
        f"caught up {len(caught)}/{n} after {fmt(res['all_caught_up_s'], 2)}s "
        f"(server CPU while reconnecting {o['server_cpu_pct_while_connecting']:.0f}%)"
    )
    close_streams(h)
    return res


def sc_unicast(h, peer, redis, prof: Profile, log, patients: int, kind: str = "sse") -> dict:
    chans = list(range(patients))
    o = open_streams(h, peer, kind, chans, prof.connect_concurrency)
    unready = barrier(h, 30)
    log(
        f"  {kind} unicast: {o['opened']}/{patients} streams ready ({unready} unready)"
        + (f", failures {o['fail_reasons']}" if o["failed"] else "")
    )
    if o["opened"] == 0:
        close_streams(h)
        raise RuntimeError(f"no {kind} stream could be opened: {o['fail_reasons']}")
    lad = ladder(
        h,
        peer,
        redis,
        kind,
        chans,
        chans,
        prof.unicast_start,
        prof,
        prof.max_unicast_rate,
        log,
        f"{kind} unicast {patients}",
    )
    at_2000 = next((s for s in lad["steps"] if abs(s["rate"] - 2000) < 1), None)
    res = {
        "patients": patients,
        "opened": o["opened"],
        "connect_rate": o["connect_rate"],
        **lad,
        "p99_at_2000_ms": at_2000["lat_ms"]["p99"] if at_2000 else None,
        "ok_at_2000": at_2000["ok"] if at_2000 else None,
    }
    close_streams(h)
    return res


def sc_broadcast(h, peer, redis, prof: Profile, log, kind: str = "sse") -> dict:
    n = prof.broadcast_streams
    stream_chans = [0] * n
    o = open_streams(h, peer, kind, stream_chans, prof.connect_concurrency)
    unready = barrier(h, 30)
    log(
        f"  {kind} broadcast: {o['opened']}/{n} streams of one patient ready ({unready} unready)"
        + (f", failures {o['fail_reasons']}" if o["failed"] else "")
    )
    if o["opened"] == 0:
        close_streams(h)
        raise RuntimeError(f"no {kind} stream could be opened: {o['fail_reasons']}")
    spc = {0: n}
    low = measure_step(h, peer, redis, [0], spc, prof.low_rate, prof.low_rate_s, fanout=True)
    log(
        f"  {kind} broadcast low rate {prof.low_rate:g} ev/s: delivery p99 {fmt(low['lat_ms']['p99'])} ms, "
        f"complete fan-out p99 {fmt(low['fanout_ms']['p99'])} ms, lost {low['lost']}"
    )
    lad = ladder(
        h,
        peer,
        redis,
        kind,
        stream_chans,
        [0],
        prof.broadcast_start,
        prof,
        prof.max_broadcast_rate,
        log,
        f"{kind} broadcast",
    )
    res = {"streams": n, "opened": o["opened"], "low_rate": low, **lad}
    close_streams(h)
    return res
