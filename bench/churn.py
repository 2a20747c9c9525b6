"""``python -m bench churn``: does memory stay flat under connection churn?

Short-lived connections against one ``notify serve`` process (default settings,
so ``NOTIFY_GC_TUNING`` on) with a real Redis, as production sees them: 75 % SSE
and 25 % WebSocket over 500 patients, opened in batches, events published to
every patient while they are open, then half closed politely (FIN; a close frame
first on WebSocket) and half reset (RST). After every tenth of the run, once the
server reports no open stream, its RSS is recorded.

Flat means: RSS at the end at most 10 % above RSS after the warm-up (the first
fifth of the run). Exits 1 unless it is flat, ``notify_open_streams`` is back to 0,
no patient channel is left subscribed in Redis and no Redis connection is left
over (more clients than after the warm-up).

    python -m bench churn                       # 100,000 connections
    python -m bench churn --connections 20000   # a shorter run
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.request
from pathlib import Path

from bench import peers, report
from bench.scenarios import Harness, open_streams, target_spec

MAX_GROWTH = 0.10
ROUNDS = 10
WARMUP_ROUNDS = 2


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def open_stream_count(port: int) -> float:
    """`notify_open_streams`, summed over transports, from the server's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("notify_open_streams{")
    )


def wait_no_open_streams(port: int, timeout_s: float = 60) -> float:
    deadline = time.monotonic() + timeout_s
    count = open_stream_count(port)
    while count > 0 and time.monotonic() < deadline:
        time.sleep(0.1)
        count = open_stream_count(port)
    return count


def redis_status(redis: peers.Redis) -> tuple[int, int]:
    """(connected clients, patient channels subscribed) of the benchmark's Redis."""
    import redis as redis_py

    client = redis_py.Redis(host="127.0.0.1", port=redis.port)
    try:
        clients = int(client.info("clients")["connected_clients"]) - 1  # minus this one
        channels = len(client.pubsub_channels("notify:patient:{*}"))
    finally:
        client.close()
    return clients, channels


def run(a: argparse.Namespace) -> dict:
    workdir = peers.make_workdir()
    redis = peers.Redis(workdir)
    h = Harness(a.subs)
    peer = peers.start_ours(redis, workdir, heartbeat_s=15)
    rows: list[dict] = []
    failures: dict[str, int] = {}
    try:
        h.pub_call("connect", target=target_spec(peer, redis))
        clients_start, _ = redis_status(redis)
        rows.append({"connections": 0, "rss_mib": peer.rss_kb() / 1024, "redis_clients": 0})
        log(f"churn: {a.connections} connections, server pid {peer.proc.pid}")
        per_round = max(1, a.connections // ROUNDS)
        done = 0
        next_row = per_round
        t0 = time.monotonic()
        while done < a.connections:
            n = min(a.batch, a.connections - done, next_row - done)
            n_ws = round(n * a.ws_fraction)
            sse = [(done + i) % a.patients for i in range(n - n_ws)]
            ws = [(done + n - n_ws + i) % a.patients for i in range(n_ws)]
            for kind, chans in (("sse", sse), ("ws", ws)):
                if chans:
                    opened = open_streams(h, peer, kind, chans, a.concurrency)
                    for reason, count in opened["fail_reasons"].items():
                        failures[reason] = failures.get(reason, 0) + count
            # Events for every patient while the streams are open.
            h.pub_call(
                "publish",
                spec={
                    "channels": list(range(a.patients)),
                    "rate": a.patients * 5,
                    "duration_s": 0.2,
                },
            )
            h.subs_all("churn_close")
            done += n
            if done >= next_row:
                left = wait_no_open_streams(peer.port)
                clients, _ = redis_status(redis)
                row = {
                    "connections": done,
                    "rss_mib": peer.rss_kb() / 1024,
                    "open_streams": left,
                    "redis_clients": clients - clients_start,
                    "elapsed_s": time.monotonic() - t0,
                }
                rows.append(row)
                log(
                    f"  {done:>7} connections: RSS {row['rss_mib']:.1f} MiB, open {left:.0f}, "
                    f"{row['elapsed_s']:.0f} s"
                )
                next_row += per_round
            if not peer.alive():
                raise RuntimeError(f"server died:\n{peer.log_tail()}")
        open_at_end = wait_no_open_streams(peer.port)
        clients_end, channels_end = redis_status(redis)
    finally:
        h.close()
        peer.stop()
        redis.stop()
    warm = rows[min(WARMUP_ROUNDS, len(rows) - 1)]
    growth = (rows[-1]["rss_mib"] - warm["rss_mib"]) / warm["rss_mib"]
    clients_left = (clients_end - clients_start) - warm["redis_clients"]
    return {
        "connections": a.connections,
        "ws_fraction": a.ws_fraction,
        "patients": a.patients,
        "batch": a.batch,
        "gc_tuning": os.environ.get("BENCH_NOTIFY_GC_TUNING", "true (default)"),
        "rows": rows,
        "growth_after_warmup": growth,
        "open_streams_at_end": open_at_end,
        "patient_channels_left": channels_end,
        "redis_clients_start": clients_start,
        "redis_clients_end": clients_end,
        "redis_clients_left_over": clients_left,
        "connect_failures": failures,
        "flat": growth <= MAX_GROWTH,
        "ok": growth <= MAX_GROWTH and open_at_end == 0 and channels_end == 0 and clients_left <= 0,
        "machine": report.machine(),
        "command": "python -m bench churn " + " ".join(a.argv),
    }


def render(result: dict) -> str:
    lines = [
        f"# Connection churn: {result['connections']:,} connections",
        "",
        f"`{result['command']}`: one `notify serve` process, real Redis, "
        f"{result['ws_fraction']:.0%} WebSocket / {1 - result['ws_fraction']:.0%} SSE over "
        f"{result['patients']} patients, batches of {result['batch']}, half closed politely, "
        f"half reset, events published to every patient during each batch. "
        f"NOTIFY_GC_TUNING: {result['gc_tuning']}.",
        "",
        "| connections | RSS (MiB) | open streams | Redis clients vs start |",
        "|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['connections']:,} | {row['rss_mib']:.1f} | "
            f"{row.get('open_streams', 0):.0f} | {row['redis_clients']:+d} |"
        )
    lines += [
        "",
        f"- RSS growth after warm-up (row {WARMUP_ROUNDS} to the end): "
        f"{result['growth_after_warmup']:+.1%} (flat: at most {MAX_GROWTH:.0%})",
        f"- `notify_open_streams` at the end: {result['open_streams_at_end']:.0f}",
        f"- patient channels still subscribed in Redis: {result['patient_channels_left']}",
        f"- Redis clients: {result['redis_clients_start']} at start, "
        f"{result['redis_clients_end']} at the end; left over beyond the warm-up's: "
        f"{result['redis_clients_left_over']}",
        f"- connect failures: {result['connect_failures'] or 'none'}",
        f"- verdict: {'PASS' if result['ok'] else 'FAIL'}",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench churn", description=__doc__)
    ap.add_argument("--connections", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=1000, help="connections open at once")
    ap.add_argument("--patients", type=int, default=500)
    ap.add_argument("--ws-fraction", type=float, default=0.25)
    ap.add_argument("--concurrency", type=int, default=500, help="connects in flight")
    ap.add_argument("--subs", type=int, default=2, help="subscriber processes in the generator")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)
    a.argv = argv
    result = run(a)
    md = render(result)
    print(md)
    if not a.no_write:
        os.makedirs(a.out, exist_ok=True)
        base = os.path.join(a.out, f"{time.strftime('%Y%m%d-%H%M%S')}-churn")
        Path(base + ".md").write_text(md)
        Path(base + ".json").write_text(json.dumps(result, indent=1, default=str))
        Path(a.out, "latest-churn.md").write_text(md)
        log(f"bench: wrote {base}.md")
    return 0 if result["ok"] else 1
