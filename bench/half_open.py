"""``python -m bench half_open``: what half-open requests cost and when they end.

N connections each send a request line and one header line and never finish
their request (the hand-made attack of issue 23). Against one ``notify serve``
per variant, in one run: the default header deadline (``NOTIFY_HEADER_TIMEOUT_S``
10 s) and the longest allowed (300 s, i.e. what uvicorn alone does for the
window of the run). Reported per variant: the server's RSS growth while they are
held, how many the server still holds after the deadline plus 5 s, and when the
last one was closed.

    python -m bench half_open                  # 4,000 connections
    python -m bench half_open --connections 1000
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import sys
import time
from pathlib import Path

from bench import peers

VARIANTS = (("default deadline (10 s)", 10.0), ("longest deadline (300 s)", 300.0))


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def measure(redis: peers.Redis, workdir: Path, n: int, deadline_s: float) -> dict[str, float]:
    peer = peers.start_ours(
        redis,
        workdir,
        heartbeat_s=15,
        env_overrides={"NOTIFY_HEADER_TIMEOUT_S": str(deadline_s)},
        log_name=f"ours-half-open-{int(deadline_s)}.log",
    )
    socks: list[socket.socket] = []
    try:
        time.sleep(1.0)
        rss0 = peer.rss_kb()
        t0 = time.monotonic()
        for _ in range(n):
            sock = socket.create_connection(("127.0.0.1", peer.port), timeout=10)
            sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: notify\r\n")
            sock.setblocking(False)
            socks.append(sock)
        opened_s = time.monotonic() - t0
        time.sleep(1.0)
        rss_held = peer.rss_kb()
        # Watch until the deadline plus 5 s: who is closed, and when.
        watch_until = t0 + min(deadline_s, 60.0) + 5.0
        closed_at: list[float] = []
        with selectors.DefaultSelector() as selector:
            for sock in socks:
                selector.register(sock, selectors.EVENT_READ)
            open_ = len(socks)
            while open_ and time.monotonic() < watch_until:
                for key, _ in selector.select(timeout=0.5):
                    ready = key.fileobj
                    assert isinstance(ready, socket.socket)
                    try:
                        data = ready.recv(4096)
                    except ConnectionError:
                        data = b""
                    if not data:
                        selector.unregister(ready)
                        closed_at.append(time.monotonic() - t0)
                        open_ -= 1
        rss_end = peer.rss_kb()
        return {
            "connections": n,
            "opened_in_s": round(opened_s, 2),
            "rss_growth_kb_while_held": rss_held - rss0,
            "kb_per_connection": round((rss_held - rss0) / n, 2),
            "still_open_at_watch_end": open_,
            "watched_s": round(watch_until - t0, 1),
            "last_closed_at_s": round(max(closed_at), 2) if closed_at else -1,
            "first_closed_at_s": round(min(closed_at), 2) if closed_at else -1,
            "rss_after_kb_vs_before": rss_end - rss0,
        }
    finally:
        for sock in socks:
            sock.close()
        peer.stop()


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench half_open", description=__doc__)
    ap.add_argument("--connections", type=int, default=4000)
    a = ap.parse_args(argv)
    workdir = peers.make_workdir()
    redis = peers.Redis(workdir)
    results: dict[str, dict[str, float]] = {}
    try:
        for name, deadline_s in VARIANTS:
            log(f"-- {name}")
            results[name] = measure(redis, workdir, a.connections, deadline_s)
            log(f"   {results[name]}")
    finally:
        redis.stop()
    print(json.dumps(results, indent=2))
    return 0
