"""``python -m bench targets``: issue 23's table, every row in one run (4-6 minutes).

    python -m bench targets                       # the issue's sizes
    python -m bench targets --streams 2000 --restart-clients 2000 --no-nchan
    python -m bench targets --rows sse_idle,connect,nchan,floor --streams 3000

Rows (one process each, the same generator as ``python -m bench``):

| row | how |
|---|---|
| restart storm | ``bench/restart.py``'s ``holding`` variant: N EventSource-faithful clients holding an id, a real SIGTERM, one event per patient published while down, restart; new process ready → every client has its missed event |
| connect rate | N new authenticated SSE streams (bearer JWT each, ``open_streams``, 500 in flight): opened / elapsed |
| idle RSS per SSE / WebSocket stream | RSS after N idle streams (all proven subscribed by the readiness barrier) minus before, / N |
| unicast 10,000 p99 at 2,000 events/s | 10,000 patients, one stream each, one 4 s step at 2,000 events/s |
| broadcast low-rate fan-out p99 | 1,000 streams of one patient, 2 events/s for 10 s: p99 of the whole fan-out (last copy) |
| workers 2 vs 1 | the connect-rate row with ``NOTIFY_WORKERS=2``, alternating with the one-worker row (two runs each, summed) |
| streams per worker | in that row, the open streams each worker holds (from /proc): the smaller worker's share (0.5 is even), against uvicorn's own shared-socket mode in the same run |
| restart, two workers | the restart storm again with ``NOTIFY_WORKERS=2`` |

Every row runs against a fresh ``notify serve``.

Nchan (nginx + nchan, one worker) gets the same idle, connect and broadcast rows
when it is installed (row ``nchan``; ``--no-nchan`` drops it). Its connect rate is
the rate while its idle streams open.

The floor (row ``floor``, issue 23): ``bench/floor_sse.py``, a bare asyncio protocol
(uvloop, httptools, PyJWT HS256 per connect, SSE head + ``retry:``, no Redis, no
events), a fresh process per row like ours: the connect-rate row (two runs,
alternating with ours' when ``connect`` is picked too, summed) and the idle-RSS-per-SSE
row. It publishes nothing, so its idle row has no readiness barrier: a stream counts
once its response head arrived. The table's floor column, and ``floor_connect``,
``floor_sse_idle`` in the JSON.

Writes ``bench/results/<stamp>-targets.md`` (+ ``.json``) and ``latest-targets.md``
(``--tag`` renames). Shared 2-core machine: compare ratios of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import peers, procstat, restart, scenarios
from bench.scenarios import Harness, barrier, close_streams, measure_step, open_streams
from tests.support.procsockets import connections_by_process, listeners_by_process


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# Issue 23's targets (issue 15's were 14 KB / 24 KB / 6,000 streams/s / 8 ms).
# Connects and broadcast are against Nchan in the same run: no Nchan row, not met.
TARGETS = {
    "restart_s": 1.5,
    "connect_vs_nchan": 0.4,
    "sse_kb": 6.0,
    "ws_kb": 10.0,
    "unicast_p99_ms": 3.0,
    "workers_ratio": 1.8,
}


def _tracemalloc_snapshot(peer: peers.Peer, wait_for: Path | None = None) -> None:
    """`BENCH_TRACEMALLOC=1`: a snapshot in the server (bench/memprof/sitecustomize.py);
    the second one writes the growth per stream next to the server's log."""
    os.kill(peer.proc.pid, signal.SIGUSR2)
    deadline = time.monotonic() + 120
    while wait_for is not None and not wait_for.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(1.0)


def idle_rows(h: Harness, peer: peers.Peer, kind: str, n: int, conc: int) -> dict[str, Any]:
    time.sleep(0.5)
    memprof = bool(os.environ.get("BENCH_TRACEMALLOC"))
    if memprof:
        _tracemalloc_snapshot(peer)
    rss0 = peer.rss_kb()
    o = open_streams(h, peer, kind, list(range(n)), conc)
    # A peer with nothing to publish to (the floor) cannot be probed: its streams
    # count as ready once their response head arrived (`opened`).
    unready = barrier(h, 30) if peer.publish != "none" else 0
    time.sleep(1.0)
    rss1 = peer.rss_kb()
    if memprof:
        out = peer.log.with_suffix(".tracemalloc.txt")
        _tracemalloc_snapshot(peer, wait_for=out)
        log(f"  tracemalloc growth per {kind} stream: {out}")
    gen = o.get("gen_cpu_pct")
    log(
        f"  {kind}: opened {o['opened']}/{n} in {o['elapsed_s']:.2f}s = {o['connect_rate']:.0f}/s "
        f"(server CPU {o['server_cpu_pct_while_connecting']:.0f}%), {unready} unready, "
        f"RSS {rss0 / 1024:.1f} -> {rss1 / 1024:.1f} MiB = {(rss1 - rss0) / max(1, o['opened']):.1f} KB/stream"
        + (f", failures {o['fail_reasons']}" if o["failed"] else "")
        + (f", generator {gen:.0f}%" if gen is not None else "")
    )
    close_streams(h)
    time.sleep(1.0)
    return {
        **o,
        "unready": unready,
        "rss_before_kb": rss0,
        "rss_after_kb": rss1,
        "kb_per_stream": (rss1 - rss0) / max(1, o["opened"]),
    }


def batch_sizes(peer: peers.Peer) -> dict[str, float]:
    """Mean requests per coalesced Redis call, per operation, from /metrics."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{peer.port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for line in text.splitlines():
        for suffix, into in (("_sum", sums), ("_count", counts)):
            head = f"notify_redis_batch_size{suffix}{{"
            if line.startswith(head):
                op = line.split('operation="', 1)[1].split('"', 1)[0]
                into[op] = float(line.rsplit(" ", 1)[1])
    return {op: round(sums[op] / counts[op], 1) for op in sums if counts.get(op)}


def streams_per_worker(peer: peers.Peer) -> list[int]:
    """Open connections each worker process holds (from /proc), largest first: the
    kernel's spread of the connects (issue 23)."""
    listening = listeners_by_process(procstat.children(peer.proc.pid), peer.port)
    workers = [pid for pid, inodes in listening.items() if inodes]
    return sorted(connections_by_process(workers, peer.port).values(), reverse=True)


def connect_only(h: Harness, peer: peers.Peer, n: int, conc: int) -> dict[str, Any]:
    g0 = h.gen_cpu_s()
    t0 = time.monotonic()
    o = open_streams(h, peer, "sse", list(range(n)), conc)
    o["gen_cpu_pct"] = 100 * (h.gen_cpu_s() - g0) / max(1e-9, time.monotonic() - t0)
    o["mean_batch"] = batch_sizes(peer) if peer.name == "ours" else {}
    o["per_worker"] = streams_per_worker(peer)
    log(
        f"  connect: {o['opened']}/{n} in {o['elapsed_s']:.2f}s = {o['connect_rate']:.0f}/s "
        f"(server CPU {o['server_cpu_pct_while_connecting']:.0f}% of its main process, "
        f"generator {o['gen_cpu_pct']:.0f}%)"
        + (f", failures {o['fail_reasons']}" if o["failed"] else "")
        + (f"; mean Redis batch since start {o['mean_batch']}" if o["mean_batch"] else "")
        + (f"; streams per worker {o['per_worker']}" if len(o["per_worker"]) > 1 else "")
    )
    close_streams(h)
    time.sleep(1.0)
    return o


def unicast_row(
    h: Harness, peer: peers.Peer, redis: peers.Redis, n: int, rate: float, conc: int
) -> dict[str, Any]:
    chans = list(range(n))
    o = open_streams(h, peer, "sse", chans, conc)
    unready = barrier(h, 30)
    time.sleep(1.0)
    st = measure_step(h, peer, redis, chans, dict.fromkeys(chans, 1), rate, 4.0)
    log(
        f"  unicast {n}: {o['opened']} open ({unready} unready); {rate:.0f} ev/s: "
        f"p50 {st['lat_ms']['p50']:.2f} p99 {st['lat_ms']['p99']:.2f} max {st['lat_ms']['max']:.1f} ms, "
        f"lost {st['lost']}, dups {st['dups']}, server {st['server_cpu_pct']:.0f}%"
    )
    close_streams(h)
    time.sleep(1.0)
    return {"opened": o["opened"], "unready": unready, "step": st}


def broadcast_row(
    h: Harness, peer: peers.Peer, redis: peers.Redis, n: int, conc: int
) -> dict[str, Any]:
    o = open_streams(h, peer, "sse", [0] * n, conc)
    unready = barrier(h, 30)
    time.sleep(1.0)
    st = measure_step(h, peer, redis, [0], {0: n}, 2.0, 10.0, fanout=True)
    log(
        f"  broadcast {n}: {o['opened']} open ({unready} unready); 2 ev/s: delivery p99 "
        f"{st['lat_ms']['p99']:.1f} ms, fan-out p99 {st['fanout_ms']['p99']:.1f} ms, lost {st['lost']}"
    )
    close_streams(h)
    time.sleep(1.0)
    return {"opened": o["opened"], "unready": unready, "step": st}


def guarded(results: dict[str, Any], key: str, fn: Callable[[], Any]) -> None:
    log(f"-- {key}")
    try:
        results[key] = fn()
    except Exception as exc:  # one broken row must not lose the run
        log(f"   {key} failed: {exc!r}")
        results[key] = {"error": repr(exc)}


ROWS = (
    "sse_idle",
    "connect",
    "ws_idle",
    "unicast",
    "broadcast",
    "workers",
    "nchan",
    "floor",
    "restart",
    "restart_w2",
)


def _summed_runs(res: dict[str, Any], key: str) -> None:
    """`<key>_1` and `<key>_2` (two connect runs) summed into `<key>`."""
    runs = [res.get(f"{key}_{i}", {}) for i in (1, 2)]
    opened = sum(r.get("opened", 0) for r in runs)
    elapsed = sum(r.get("elapsed_s", 0) for r in runs)
    if opened and elapsed:
        res[key] = {
            "connect_rate": opened / elapsed,
            "server_cpu_pct_while_connecting": runs[0].get("server_cpu_pct_while_connecting"),
            "gen_cpu_pct": runs[0].get("gen_cpu_pct"),
            "runs": [round(r["connect_rate"], 1) for r in runs if r.get("connect_rate")],
            "per_worker": [r.get("per_worker") for r in runs],
        }


def _with_ours(
    redis: peers.Redis,
    workdir: Path,
    h: Harness,
    name: str,
    fn: Callable[[peers.Peer], Any],
    workers: int = 1,
    shared_socket: bool = False,
) -> Any:
    """`fn` against a fresh `notify serve`: RSS deltas and latencies are not
    skewed by memory a previous row freed (the allocator reuses it) or by its
    garbage."""
    redis.flush()
    env = {"NOTIFY_WORKERS": str(workers)} if workers != 1 else None
    peer = peers.start_ours(
        redis,
        workdir,
        heartbeat_s=15,
        env_overrides=env,
        log_name=f"ours-{name}.log",
        shared_socket_workers=workers if shared_socket else None,
    )
    try:
        if workers > 1:
            time.sleep(2.0)  # every worker up (the port answers once the first is)
        h.pub_call("connect", target=scenarios.target_spec(peer, redis))
        return fn(peer)
    finally:
        peer.stop()


def _with_floor(workdir: Path, name: str, fn: Callable[[peers.Peer], Any]) -> Any:
    """`fn` against a fresh floor (`bench/floor_sse.py`), as `_with_ours` for ours."""
    peer = peers.start_floor(workdir, log_name=f"floor-{name}.log")
    try:
        return fn(peer)
    finally:
        peer.stop()


def run(a: argparse.Namespace) -> dict[str, Any]:
    rows = set(a.rows.split(","))
    if a.no_nchan:
        rows.discard("nchan")
    workdir = peers.make_workdir()
    redis = peers.Redis(workdir)
    h = Harness(2)
    res: dict[str, Any] = {"workdir": str(workdir)}
    started = time.monotonic()

    def ours(
        key: str, fn: Callable[[peers.Peer], Any], workers: int = 1, shared_socket: bool = False
    ) -> None:
        guarded(res, key, lambda: _with_ours(redis, workdir, h, key, fn, workers, shared_socket))

    def floor(key: str, fn: Callable[[peers.Peer], Any]) -> None:
        guarded(res, key, lambda: _with_floor(workdir, key, fn))

    try:
        if rows & {"connect", "workers", "floor"}:
            # Alternating, so that a noisy neighbour hurts both alike.
            for i in (1, 2):
                if rows & {"connect", "workers"}:
                    ours(f"ours_connect_w1_{i}", lambda p: connect_only(h, p, a.streams, a.conc))
                if "workers" in rows:
                    ours(
                        f"ours_connect_w2_{i}",
                        lambda p: connect_only(h, p, a.streams, a.conc),
                        workers=2,
                    )
                    # A/B: uvicorn's own mode, one socket shared by both workers.
                    ours(
                        f"ours_connect_w2shared_{i}",
                        lambda p: connect_only(h, p, a.streams, a.conc),
                        workers=2,
                        shared_socket=True,
                    )
                if "floor" in rows:
                    floor(f"floor_connect_{i}", lambda p: connect_only(h, p, a.streams, a.conc))
            for key in ("ours_connect_w1", "ours_connect_w2", "ours_connect_w2shared"):
                _summed_runs(res, key)
            _summed_runs(res, "floor_connect")
        if "sse_idle" in rows:
            ours("ours_sse_idle", lambda p: idle_rows(h, p, "sse", a.streams, a.conc))
        if "floor" in rows:
            floor("floor_sse_idle", lambda p: idle_rows(h, p, "sse", a.streams, a.conc))
        if "ws_idle" in rows:
            ours("ours_ws_idle", lambda p: idle_rows(h, p, "ws", a.streams, a.conc))
        if "unicast" in rows:
            ours("ours_unicast", lambda p: unicast_row(h, p, redis, a.unicast, 2000.0, a.conc))
        if "broadcast" in rows:
            ours("ours_broadcast", lambda p: broadcast_row(h, p, redis, 1000, a.conc))
        if "nchan" in rows:
            nchan_rows(h, redis, workdir, a, res)
        h.close()
        for key, workers in (("restart", 1), ("restart_w2", 2)):
            if key in rows:
                redis.flush()
                guarded(
                    res,
                    key,
                    lambda workers=workers: asyncio.run(
                        restart.run_variant(
                            "holding", a.restart_clients, redis, workdir, workers=workers
                        )
                    ),
                )
    finally:
        with contextlib.suppress(Exception):
            h.close()
        redis.stop()
    res["wall_s"] = round(time.monotonic() - started, 1)
    return res


def nchan_rows(
    h: Harness, redis: peers.Redis, workdir: Path, a: argparse.Namespace, res: dict[str, Any]
) -> None:
    ok, why = peers.ensure_nchan(install=True)
    if not ok:
        log(f"   no Nchan column: {why}")
        return
    try:
        nchan = peers.start_nchan(workdir, 15)
    except Exception as exc:  # it would not start: no column
        log(f"   nchan not started: {exc!r}")
        return
    try:
        h.pub_call("connect", target=scenarios.target_spec(nchan, redis))
        guarded(res, "nchan_sse_idle", lambda: idle_rows(h, nchan, "sse", a.streams, a.conc))
        guarded(res, "nchan_broadcast", lambda: broadcast_row(h, nchan, redis, 1000, a.conc))
    finally:
        nchan.stop()


def _get(res: dict[str, Any], *path: str) -> Any:
    cur: Any = res
    for p in path:
        if not isinstance(cur, dict) or p not in cur:
            return None
        cur = cur[p]
    return cur


def _f(v: Any, nd: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float | int) and abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{nd}f}"


def _load(avg: tuple[float, float, float]) -> str:
    return " ".join(f"{v:.2f}" for v in avg)


def render(res: dict[str, Any], a: argparse.Namespace) -> str:
    w1 = _get(res, "ours_connect_w1", "connect_rate")
    w2 = _get(res, "ours_connect_w2", "connect_rate")
    ratio = (w2 / w1) if w1 and w2 else None
    # The smaller worker's share of the streams, over both runs.
    per_worker = [p for p in _get(res, "ours_connect_w2", "per_worker") or [] if p]
    spread = (
        sum(min(p) for p in per_worker) / sum(sum(p) for p in per_worker)
        if per_worker and all(len(p) == 2 for p in per_worker)
        else None
    )
    nchan_rate = _get(res, "nchan_sse_idle", "connect_rate")
    connect_target = TARGETS["connect_vs_nchan"] * nchan_rate if nchan_rate else None
    nchan_kb = _get(res, "nchan_sse_idle", "kb_per_stream")
    nchan_fan = _get(res, "nchan_broadcast", "step", "fanout_ms", "p99")
    floor_rate = _get(res, "floor_connect", "connect_rate")
    floor_kb = _get(res, "floor_sse_idle", "kb_per_stream")
    # The one connect figure measured alike on all three: the rate while the idle
    # streams open (Nchan's connect figure is this one).
    fill = ", ".join(
        f"{name} {_f(_get(res, key, 'connect_rate'), 0)}"
        for name, key in (
            ("ours", "ours_sse_idle"),
            ("Nchan", "nchan_sse_idle"),
            ("floor", "floor_sse_idle"),
        )
    )
    restart_s = _get(res, "restart", "catch_up_s")
    restart_lost = _get(res, "restart", "lost")
    rows = [
        (
            f"restart storm: {a.restart_clients:,} SSE clients holding ids, SIGTERM + restart, "
            "new process ready → all have the missed event (s)",
            restart_s,
            None,
            None,
            TARGETS["restart_s"],
            restart_s is not None and restart_s <= TARGETS["restart_s"] and restart_lost == 0,
            f"lost {restart_lost}, duplicates {_get(res, 'restart', 'duplicates')}",
        ),
        (
            "the same, NOTIFY_WORKERS=2 (s)",
            _get(res, "restart_w2", "catch_up_s"),
            None,
            None,
            TARGETS["restart_s"],
            (_get(res, "restart_w2", "catch_up_s") or 1e9) <= TARGETS["restart_s"]
            and _get(res, "restart_w2", "lost") == 0,
            f"lost {_get(res, 'restart_w2', 'lost')}, "
            f"duplicates {_get(res, 'restart_w2', 'duplicates')}",
        ),
        (
            f"connect rate, new authenticated SSE streams/s ({a.streams:,}, {a.conc} in flight)",
            w1,
            nchan_rate,
            floor_rate,
            connect_target if connect_target is not None else "0.4 x Nchan (no Nchan row)",
            w1 is not None and connect_target is not None and w1 >= connect_target,
            f"server CPU {_f(_get(res, 'ours_connect_w1', 'server_cpu_pct_while_connecting'), 0)}%, "
            f"generator {_f(_get(res, 'ours_connect_w1', 'gen_cpu_pct'), 0)}%; floor: runs "
            f"{_get(res, 'floor_connect', 'runs')}, server CPU "
            f"{_f(_get(res, 'floor_connect', 'server_cpu_pct_while_connecting'), 0)}%; "
            f"while the idle streams open: {fill}",
        ),
        (
            f"idle RSS per SSE stream, {a.streams:,} streams (KB)",
            _get(res, "ours_sse_idle", "kb_per_stream"),
            nchan_kb,
            floor_kb,
            TARGETS["sse_kb"],
            (_get(res, "ours_sse_idle", "kb_per_stream") or 1e9) <= TARGETS["sse_kb"],
            "",
        ),
        (
            f"idle RSS per WebSocket, {a.streams:,} sockets (KB)",
            _get(res, "ours_ws_idle", "kb_per_stream"),
            None,
            None,
            TARGETS["ws_kb"],
            (_get(res, "ours_ws_idle", "kb_per_stream") or 1e9) <= TARGETS["ws_kb"],
            "",
        ),
        (
            f"unicast {a.unicast:,} patients, p99 at 2,000 events/s (ms)",
            _get(res, "ours_unicast", "step", "lat_ms", "p99"),
            None,
            None,
            TARGETS["unicast_p99_ms"],
            (_get(res, "ours_unicast", "step", "lat_ms", "p99") or 1e9) <= TARGETS["unicast_p99_ms"]
            and _get(res, "ours_unicast", "step", "lost") == 0,
            f"lost {_get(res, 'ours_unicast', 'step', 'lost')}",
        ),
        (
            "broadcast 1,000 streams, whole fan-out p99 at 2 events/s (ms)",
            _get(res, "ours_broadcast", "step", "fanout_ms", "p99"),
            nchan_fan,
            None,
            "≤ Nchan",
            nchan_fan is not None
            and (_get(res, "ours_broadcast", "step", "fanout_ms", "p99") or 1e9) <= nchan_fan,
            f"delivery p99 {_f(_get(res, 'ours_broadcast', 'step', 'lat_ms', 'p99'))} ms",
        ),
        (
            "connect rate, NOTIFY_WORKERS=2 ÷ 1 (same run)",
            ratio,
            None,
            None,
            TARGETS["workers_ratio"],
            ratio is not None and ratio >= TARGETS["workers_ratio"],
            f"{_f(w2, 0)} vs {_f(w1, 0)} streams/s (two alternating runs each: "
            f"{_get(res, 'ours_connect_w2', 'runs')} vs {_get(res, 'ours_connect_w1', 'runs')})",
        ),
        (
            "streams per worker, NOTIFY_WORKERS=2: own SO_REUSEPORT sockets (uvicorn's shared socket)",
            spread,
            None,
            None,
            "even",
            spread is not None,
            f"{_get(res, 'ours_connect_w2', 'per_worker')} "
            f"({_get(res, 'ours_connect_w2shared', 'per_worker')}, "
            f"{_f(_get(res, 'ours_connect_w2shared', 'connect_rate'), 0)} streams/s)",
        ),
    ]
    lines = [
        "| figure | ours | Nchan | floor | target | met | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, ours, nchan, floor, target, met, notes in rows:
        nd = 2 if isinstance(ours, float) and ours < 10 else 1
        lines.append(
            f"| {name} | {_f(ours, nd)} | {_f(nchan)} | {_f(floor)} "
            f"| {_f(target) if not isinstance(target, str) else target} "
            f"| {'yes' if met else 'no'} | {notes} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench targets",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--streams", type=int, default=5000, help="idle and connect-rate streams")
    ap.add_argument("--conc", type=int, default=500, help="connects in flight")
    ap.add_argument("--unicast", type=int, default=10000, help="unicast patients")
    ap.add_argument("--restart-clients", type=int, default=5000)
    ap.add_argument("--rows", default=",".join(ROWS), help="comma list of " + ",".join(ROWS))
    ap.add_argument("--no-nchan", action="store_true", help="skip the nchan row")
    ap.add_argument("--tag", default="targets")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)
    if os.environ.get("BENCH_TRACEMALLOC"):
        os.environ["BENCH_TRACEMALLOC_STREAMS"] = str(a.streams)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    load_at_start = os.getloadavg()
    res = run(a)
    res["load_at_start"] = load_at_start
    table = render(res, a)
    head = (
        f"# Issue 23's targets, with the floor ({time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())})\n\n"
        f"Command: `python -m bench targets {' '.join(argv)}`; wall time {res['wall_s']} s; "
        f"load average at start {_load(load_at_start)}, at end {_load(os.getloadavg())}. One process per peer, one generator "
        "(2 subscriber processes + 1 publisher), 2 shared cores: compare figures of this run.\n\n"
    )
    text = head + table + "\n"
    print(text)
    if not a.no_write:
        out_dir = peers.REPO / "bench" / "results"
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = out_dir / f"{stamp}-{a.tag}.md"
        out.write_text(text)
        out.with_suffix(".json").write_text(json.dumps(res, indent=2, default=str))
        (out_dir / f"latest-{a.tag}.md").write_text(text)
        log(f"bench: wrote {out}")
    return 0
