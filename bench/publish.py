"""``python -m bench publish``: what publishing costs, through the publisher
package (issue 21), in one run against a Redis of its own (plus one replica).

Rows (events/s from one asyncio process, ``--events`` events over ``--patients``
patients, sequential unless said otherwise):

- raw ``XADD`` + ``PUBLISH`` one at a time (two commands, not atomic, no id in
  the live message: the floor a hand-rolled publisher would start from);
- the script without an idempotency key (``EVALSHA publish.lua``, one at a time);
- the script with a key (what ``Publisher.publish`` always sends): the cost of
  idempotency is the difference with the row above;
- ``Publisher.publish`` one at a time (validation, serialization, a key made up);
- ``Publisher.publish_many`` in batches of ``--batch`` (one pipeline each);
- ``Publisher.publish`` from ``--tasks`` concurrent tasks;
- latency p50/p99 of ``Publisher.publish`` plain and durable (``wait_replicas=1``
  with one replica attached: the script, then ``WAIT 1`` on the same connection).

    python -m bench publish
    python -m bench publish --events 20000 --batch 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from notify_publisher import Publisher
from notify_publisher.keys import RedisKeys
from notify_publisher.request import (
    SCRIPT,
    SCRIPT_SHA,
    build_request,
    new_idempotency_key,
    prepare_event,
)

from bench import report
from tests.support.redis_server import RedisServer, wait_until


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def events(count: int, patients: int) -> list[dict[str, Any]]:
    return [
        {
            "type": "appointment.rescheduled",
            "patient_id": f"pt_{i % patients}",
            "appointment_id": f"ap_{i}",
            "occurred_at": "2026-11-27T09:30:00Z",
            "data": {
                "status": "scheduled",
                "starts_at": "2026-12-01T14:00:00Z",
                "ends_at": "2026-12-01T14:30:00Z",
                "location_id": "loc_3",
            },
        }
        for i in range(count)
    ]


async def rate(label: str, count: int, run: Callable[[], Awaitable[None]]) -> dict[str, Any]:
    started = time.perf_counter()
    await run()
    elapsed = time.perf_counter() - started
    row = {
        "row": label,
        "events": count,
        "seconds": round(elapsed, 3),
        "per_s": round(count / elapsed),
    }
    log(f"   {label}: {row['per_s']}/s")
    return row


async def latencies(
    label: str,
    count: int,
    publish: Callable[[dict[str, Any]], Awaitable[str]],
    batch: list[dict[str, Any]],
) -> dict[str, Any]:
    samples = []
    for event in batch[:count]:
        started = time.perf_counter()
        await publish(event)
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    row = {
        "row": label,
        "events": len(samples),
        "p50_ms": round(statistics.median(samples), 3),
        "p99_ms": round(samples[int(len(samples) * 0.99) - 1], 3),
        "max_ms": round(samples[-1], 3),
    }
    log(f"   {label}: p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms")
    return row


async def measure(primary: RedisServer, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    batch = events(args.events, args.patients)
    client = aioredis.Redis(host="127.0.0.1", port=primary.port)
    await client.script_load(SCRIPT)

    async def fresh() -> RedisKeys:
        await client.flushall()
        await client.script_load(SCRIPT)
        return RedisKeys("bench:")

    keys = await fresh()

    async def raw() -> None:
        for event in batch:
            prepared = prepare_event(event)
            patient = prepared.event.patient_id
            async with client.pipeline(transaction=False) as pipe:
                pipe.xadd(
                    keys.history(patient), {"e": prepared.json}, maxlen=1000, approximate=True
                )
                pipe.publish(keys.patient_channel(patient), prepared.json)
                await pipe.execute()

    rows.append(await rate("raw XADD + PUBLISH (2 commands, no id live)", len(batch), raw))

    async def script(with_key: bool) -> None:
        for event in batch:
            request = build_request(
                prepare_event(event),
                keys=keys,
                maxlen=1000,
                ttl_s=604800,
                sharded=False,
                idempotency_key=new_idempotency_key() if with_key else None,
                idempotency_ttl_s=86400,
            )
            await client.evalsha(SCRIPT_SHA, len(request.keys), *request.keys, *request.args)

    keys = await fresh()
    rows.append(await rate("publish.lua, no idempotency key", len(batch), lambda: script(False)))
    keys = await fresh()
    rows.append(
        await rate("publish.lua, with an idempotency key", len(batch), lambda: script(True))
    )
    memory = await client.info("memory")
    records = len([k async for k in client.scan_iter("bench:idempotency:*", count=1000)])
    rows[-1]["idempotency_records"] = records
    rows[-1]["used_memory_mb"] = round(int(memory["used_memory"]) / 2**20, 1)

    environ = {"NOTIFY_REDIS_URL": primary.url, "NOTIFY_KEY_PREFIX": "bench:"}
    async with Publisher.from_env(environ) as publisher:

        async def one_at_a_time() -> None:
            for event in batch:
                await publisher.publish(event)

        async def many() -> None:
            for start in range(0, len(batch), args.batch):
                await publisher.publish_many(batch[start : start + args.batch])

        async def concurrent() -> None:
            async def work(mine: list[dict[str, Any]]) -> None:
                for event in mine:
                    await publisher.publish(event)

            await asyncio.gather(*(work(batch[i :: args.tasks]) for i in range(args.tasks)))

        await fresh()
        rows.append(await rate("Publisher.publish, one at a time", len(batch), one_at_a_time))
        await fresh()
        rows.append(
            await rate(f"Publisher.publish_many, batches of {args.batch}", len(batch), many)
        )
        await fresh()
        rows.append(await rate(f"Publisher.publish, {args.tasks} tasks", len(batch), concurrent))

        await fresh()
        rows.append(
            await latencies(
                "latency: Publisher.publish", args.latency_events, publisher.publish, batch
            )
        )
        await fresh()
        rows.append(
            await latencies(
                "latency: Publisher.publish(wait_replicas=1), 1 replica",
                args.latency_events,
                lambda e: publisher.publish(e, wait_replicas=1),
                batch,
            )
        )
    await client.aclose()
    return rows


def render(result: dict[str, Any]) -> str:
    lines = [
        "# bench publish",
        "",
        f"`{result['command'].strip()}` on {result['machine'].get('cpu', '?')} "
        f"({result['machine'].get('cores', '?')} cores, load average at start "
        f"{result['machine'].get('loadavg_at_start', ('?',))[0]:.1f}), Redis "
        f"{result['redis_version']}, {result['events']} events over {result['patients']} "
        "patients, one asyncio process, localhost. A shared machine: compare rows of "
        "one run, not runs.",
        "",
        "| row | events/s | p50 ms | p99 ms | notes |",
        "|---|---:|---:|---:|---|",
    ]
    for row in result["rows"]:
        notes = ""
        if "idempotency_records" in row:
            notes = f"{row['idempotency_records']} records, used_memory {row['used_memory_mb']} MiB"
        lines.append(
            f"| {row['row']} | {row.get('per_s', '')} | {row.get('p50_ms', '')} | "
            f"{row.get('p99_ms', '')} | {notes} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench publish")
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--patients", type=int, default=500)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--latency-events", type=int, default=2000)
    args = parser.parse_args(argv)
    primary = RedisServer()
    primary.start()
    replica = RedisServer(extra_args=("--replicaof", "127.0.0.1", str(primary.port)))
    replica.start()
    try:
        probe = primary.client()
        wait_until(
            lambda: int(probe.info("replication").get("connected_slaves", 0)) == 1,  # type: ignore[union-attr]
            20,
            "the replica to attach",
        )
        version = str(probe.info("server")["redis_version"])  # type: ignore[index]
        probe.close()
        rows = asyncio.run(measure(primary, args))
    finally:
        replica.stop(kill=True)
        primary.stop(kill=True)
    result = {
        "command": "python -m bench publish " + " ".join(argv),
        "machine": report.machine(),
        "redis_version": version,
        "events": args.events,
        "patients": args.patients,
        "rows": rows,
    }
    markdown = render(result)
    print(markdown)
    outdir = os.path.join(os.path.dirname(__file__), "results")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    with open(os.path.join(outdir, f"{stamp}-publish.md"), "w") as f:
        f.write(markdown)
    with open(os.path.join(outdir, f"{stamp}-publish.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(outdir, "latest-publish.md"), "w") as f:
        f.write(markdown)
    return 0
