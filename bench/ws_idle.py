"""How many idle WebSocket connections one `notify serve` process holds, at what RSS.

    .venv/bin/python -m bench.ws_idle                    # 5,000 sockets, deflate offered
    .venv/bin/python -m bench.ws_idle -n 2000 --compression none

Starts its own Redis (free port) and one `notify serve` process (one worker), then
opens N WebSockets from this process, each authenticated (bearer header) and
subscribed to its own patient's stream, so the server holds N connections, N hub
subscriptions and N Redis channel subscriptions (on its one pub/sub connection).
Reports the server's RSS before and after, per connection, and checks the sockets
are alive by publishing to a sample of patients.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import signal
import sys
import tempfile
import time
from pathlib import Path

import redis.asyncio as aioredis
from websockets.asyncio.client import ClientConnection, connect

from bench import peers
from service.services.tokens import mint_token


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def raise_nofile(needed: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


async def open_one(
    url: str, patient: str, compression: str | None, sem: asyncio.Semaphore
) -> ClientConnection:
    token = mint_token(
        secret=peers.JWT_SECRET,
        sub=patient,
        audience="notify",
        issuer="notify-dev",
        ttl_s=3600,
    )
    async with sem:
        ws = await connect(
            url,
            additional_headers={"Authorization": f"Bearer {token}"},
            compression=compression,
            proxy=None,
            open_timeout=60,
            # The server's protocol pings keep the sockets alive; ours would only add load.
            ping_interval=None,
        )
        await ws.send(json.dumps({"type": "subscribe"}))
        while True:
            message = json.loads(await asyncio.wait_for(ws.recv(), 60))
            if message["type"] == "subscribed":
                return ws
            if message["type"] != "authenticated":
                raise RuntimeError(f"refused: {message}")


async def run(
    n: int, compression: str | None, settle_s: float, concurrency: int, memprofile: bool
) -> dict[str, object]:
    limit = raise_nofile(n + 1000)
    if limit < n + 100:
        raise SystemExit(f"RLIMIT_NOFILE is {limit}: too low for {n} sockets")
    workdir = Path(tempfile.mkdtemp(prefix="ws-idle-"))
    store = peers.Redis(workdir)
    if memprofile:
        # bench/memprof: SIGUSR2 snapshots, growth per connection written to a file.
        os.environ["BENCH_TRACEMALLOC"] = "1"
        os.environ["BENCH_TRACEMALLOC_STREAMS"] = str(n)
    server = peers.start_ours(store, workdir, heartbeat_s=15)
    sockets: list[ClientConnection] = []
    try:
        pid = server.proc.pid
        await asyncio.sleep(1.0)  # let start-up allocations settle
        before = rss_kib(pid)
        if memprofile:
            os.kill(pid, signal.SIGUSR2)
        url = f"ws://127.0.0.1:{server.port}/v1/ws"
        sem = asyncio.Semaphore(concurrency)
        started = time.monotonic()
        sockets = list(
            await asyncio.gather(*(open_one(url, f"pt_{i}", compression, sem) for i in range(n)))
        )
        connect_s = time.monotonic() - started
        await asyncio.sleep(settle_s)  # idle: nothing but protocol pings
        after = rss_kib(pid)
        if memprofile:
            os.kill(pid, signal.SIGUSR2)
            report = server.log.with_suffix(".tracemalloc.txt")
            for _ in range(600):  # the snapshot holds the server's loop a while
                if report.exists():
                    break
                await asyncio.sleep(0.5)
            print(f"tracemalloc: {report}", file=sys.stderr)

        # Alive? Publish to a sample of patients; each must get its event.
        sample = random.sample(range(n), min(100, n))
        client = aioredis.Redis(host="127.0.0.1", port=store.port)
        prefix = "notify:"
        for i in sample:
            event = {
                "type": "appointment.reminder",
                "patient_id": f"pt_{i}",
                "appointment_id": "ap_1",
                "occurred_at": "2026-11-27T09:30:00Z",
            }
            await client.publish(f"{prefix}patient:{{pt_{i}}}", json.dumps(event))
        received = 0
        for i in sample:
            message = json.loads(await asyncio.wait_for(sockets[i].recv(), 10))
            received += message.get("type") == "event"
        patterns = await client.execute_command("PUBSUB", "NUMPAT")
        channels = len(await client.pubsub_channels(f"{prefix}patient:{{*}}"))
        await client.aclose()
        return {
            "connections": n,
            "compression": compression or "none",
            "connect_s": round(connect_s, 1),
            "rss_before_mib": round(before / 1024, 1),
            "rss_after_mib": round(after / 1024, 1),
            "per_connection_kib": round((after - before) / n, 1),
            "redis_channels": channels,
            "redis_patterns": patterns,
            "sample_delivered": f"{received}/{len(sample)}",
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
        }
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
        server.stop()
        store.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("-n", "--connections", type=int, default=5000)
    parser.add_argument("--compression", choices=["deflate", "none"], default="deflate")
    parser.add_argument("--settle-s", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--memprofile", action="store_true", help="tracemalloc growth per socket")
    args = parser.parse_args()
    compression = None if args.compression == "none" else "deflate"
    result = asyncio.run(
        run(args.connections, compression, args.settle_s, args.concurrency, args.memprofile)
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
