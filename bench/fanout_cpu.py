"""The Python CPU of one broadcast fan-out, without sockets (issue 23).

N handed-over `SseStream`s of one channel on transports whose `write()` only
counts bytes; each round offers BATCH raw events through `Hub.on_message` in one
loop iteration, then runs the end-of-iteration flush (`service/transports/writes.py`).
Prints the median µs per stream per round (hub offer + flush; no syscall, so
what a broadcast costs in Python around `transport.write`), and the hub's share.

    .venv/bin/python bench/fanout_cpu.py [N=1000] [ROUNDS=200] [BATCH=1]
    PYTHONPATH=/tmp/base .venv/bin/python bench/fanout_cpu.py   # another service/ tree

Not a peer of the main bench: no server, no generator; a benchmark only.
"""

from __future__ import annotations

import asyncio
import gc
import json
import statistics
import sys
import time
from typing import cast

import uvloop
from notify_publisher.keys import RedisKeys

import service
from service.fanout.clock import Clock as ServiceClock
from service.fanout.connection import SseConnection
from service.fanout.hub import Hub
from service.fanout.queue import DeliveryQueue
from service.transports.http_protocol import Taken
from service.transports.sse_stream import SseStream

N = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 200
# Events per round, offered in one loop iteration (one listener batch).
BATCH = int(sys.argv[3]) if len(sys.argv) > 3 else 1
KEYS = RedisKeys("b:")


class Broker:
    async def subscribe(self, channel: str) -> None: ...
    async def subscribe_many(self, channels: list[str]) -> None: ...
    async def unsubscribe(self, channel: str) -> None: ...


class Transport:
    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0

    def write(self, data: bytes) -> None:
        self.n += len(data)

    def is_closing(self) -> bool:
        return False


class Clock:
    heartbeat_s = 15.0
    send_timeout_s = 10.0

    def add(self, watch: object, *, heartbeats: object = None) -> None: ...
    def discard(self, owner: object) -> None: ...


class Conn:
    __slots__ = ("queue",)

    def __init__(self, queue: DeliveryQueue) -> None:
        self.queue = queue


def event(seq: int) -> bytes:
    return json.dumps(
        {
            "id": f"{1700000000000 + seq}-0",
            "type": "appointment.rescheduled",
            "patient_id": "pt_b",
            "appointment_id": "ap_1",
            "occurred_at": "2026-11-27T09:00:00Z",
            "data": {"status": "scheduled", "seq": seq, "sent_ns": 123456789},
        }
    ).encode()


async def main() -> None:
    hub = Hub(keys=KEYS, broker=Broker())
    clock = Clock()
    transports = []
    for _ in range(N):
        queue = DeliveryQueue(maxlen=64, transport="sse")
        await hub.attach("pt_b", queue)
        stream = SseStream(
            connection=cast(SseConnection, Conn(queue)),
            clock=cast(ServiceClock, clock),
            retry_ms=3000,
            resume_from=None,
        )
        transport = Transport()
        transports.append(transport)
        taken = Taken(
            cast(asyncio.Transport, transport), chunked=True, write_paused=False, connections=set()
        )
        stream.take(taken, request_id=None)
    await asyncio.sleep(0)
    channel = KEYS.patient_channel("pt_b")
    gc.collect()
    gc.freeze()
    times = []
    hub_times = []
    for r in range(1, ROUNDS + 1):
        raws = [event(r * BATCH + k) for k in range(BATCH)]
        t0 = time.perf_counter()
        for raw in raws:
            hub.on_message(channel, raw)
        t1 = time.perf_counter()
        await asyncio.sleep(0)  # the flush runs at the end of this iteration
        times.append(time.perf_counter() - t0)
        hub_times.append(t1 - t0)
    assert all(t.n > 0 for t in transports)
    us = [t / N * 1e6 for t in times]
    print(
        f"{service.__file__}: {N} streams, {ROUNDS} rounds of {BATCH}: per stream median "
        f"{statistics.median(us):.3f} µs, p10 {statistics.quantiles(us, n=10)[0]:.3f}, "
        f"fan-out median {statistics.median(times) * 1e3:.2f} ms (hub: offer to every queue {statistics.median(hub_times) * 1e3:.2f} ms)"
    )


uvloop.run(main())
