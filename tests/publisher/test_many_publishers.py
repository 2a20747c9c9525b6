"""Backends at scale, as issue 21 describes them: `SyncPublisher` from 8 threads
and `Publisher` from 200 tasks publish 10,000 events over 500 patients while
every patient has an SSE stream open (and every 5th a WebSocket as well); each
stream and socket receives each of its events exactly once, in the order its
publisher published them. On standalone Redis, Cluster and Sentinel."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from service.config import Settings
from tests.conftest import SettingsFactory, Tokens, bearer
from tests.support.app_server import ServiceProcess, running
from tests.support.load import assert_once_in_order, assert_ws_once_in_order, ids
from tests.support.redis_topologies import LocalSentinel
from tests.support.sse import SSEStream, open_sse, opened
from tests.support.ws import WSClient, open_ws

THREADS = 8
TASKS = 200
WS_EVERY = 5  # every 5th patient also holds a WebSocket


@pytest.fixture
def sentinel() -> Iterator[LocalSentinel]:
    group = LocalSentinel()
    group.start()
    yield group
    group.stop()


def publisher_environ(settings: Settings) -> dict[str, str]:
    environ = {
        "NOTIFY_REDIS_URL": settings.redis_url or "",
        "NOTIFY_KEY_PREFIX": settings.key_prefix,
    }
    if settings.redis_mode.value != "standalone":
        environ["NOTIFY_REDIS_MODE"] = settings.redis_mode.value
    if settings.redis_mode.value == "sentinel":
        environ["NOTIFY_REDIS_SENTINELS"] = ",".join(settings.redis_sentinels)
        environ["NOTIFY_REDIS_SENTINEL_MASTER"] = settings.redis_sentinel_master or ""
    return environ


# A blocking backend (a Django or Celery process): one SyncPublisher shared by
# 8 threads, in a process of its own (its threads would otherwise hold the GIL
# against the test's event loop). Each thread publishes its patients' events:
# every other patient as one batch (publish_many), the rest one at a time.
THREADED_BACKEND = """
import json, sys, threading
from notify_publisher import SyncPublisher

patients, per_patient, threads = json.loads(sys.argv[1])

def events(patient):
    return [{"type": "appointment.rescheduled", "patient_id": patient,
             "appointment_id": f"ap_{seq}", "occurred_at": "2026-11-27T09:30:00Z",
             "data": {"status": "scheduled", "seq": seq}} for seq in range(per_patient)]

def work(mine):
    for index, patient in enumerate(mine):
        if index % 2:
            publisher.publish_many(events(patient))
        else:
            for one in events(patient):
                publisher.publish(one)

with SyncPublisher.from_env() as publisher:
    workers = [threading.Thread(target=work, args=(patients[i::threads],)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
print("published")
"""


# An asyncio backend: one Publisher shared by 200 tasks, in a process of its own.
TASKS_BACKEND = """
import asyncio, json, sys
from notify_publisher import Publisher

patients, per_patient, tasks = json.loads(sys.argv[1])

def events(patient):
    return [{"type": "appointment.rescheduled", "patient_id": patient,
             "appointment_id": f"ap_{seq}", "occurred_at": "2026-11-27T09:30:00Z",
             "data": {"status": "scheduled", "seq": seq}} for seq in range(per_patient)]

async def work(publisher, mine):
    for index, patient in enumerate(mine):
        if index % 2:
            await publisher.publish_many(events(patient))
        else:
            for one in events(patient):
                await publisher.publish(one)

async def main():
    async with Publisher.from_env() as publisher:
        await asyncio.gather(*(work(publisher, patients[i::tasks]) for i in range(tasks)))

asyncio.run(main())
print("published")
"""


async def backend(code: str, args: list[Any], environ: dict[str, str]) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        json.dumps(args),
        env={**os.environ, **environ},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 300)
    assert process.returncode == 0, err.decode()
    assert out.decode().strip() == "published"


@pytest.mark.parametrize(
    ("redis_topology", "patients", "per_patient"),
    [("standalone", 500, 20), ("cluster", 500, 20), ("sentinel", 500, 20)],
    indirect=["redis_topology"],
)
def test_threads_and_tasks_publish_and_every_stream_gets_each_event_once_in_order(
    request: pytest.FixtureRequest,
    redis_topology: str,
    make_settings: SettingsFactory,
    tokens: Tokens,
    patients: int,
    per_patient: int,
) -> None:
    capacity = {"max_connections": patients * 2 + 100}
    if redis_topology == "sentinel":
        group: LocalSentinel = request.getfixturevalue("sentinel")
        settings = make_settings(
            **capacity,
            redis_url=None,
            redis_mode="sentinel",
            redis_sentinels=group.addresses,
            redis_sentinel_master=group.master_name,
        )
    else:
        settings = make_settings(**capacity)
    # The service and both backends run in processes of their own; this process
    # only holds the SSE and WebSocket clients. Its loop runs outside the suite's
    # blocked-loop guard (which watches async tests for blocking calls in the
    # service's code, none of which runs here): with 500 streams and their frames,
    # a collection of this client's garbage on a busy machine outlasts the guard's
    # 0.5 s.
    asyncio.run(scenario(settings, tokens, patients, per_patient))


async def scenario(settings: Settings, tokens: Tokens, patients: int, per_patient: int) -> None:
    names = [f"pt_{i}" for i in range(patients)]
    # Each patient has one publisher (its order is that publisher's order): the
    # first half is shared among the threads, the second among the tasks.
    threaded, tasked = names[: patients // 2], names[patients // 2 :]
    environ = publisher_environ(settings)
    async with (
        running(ServiceProcess(settings)) as app,
        httpx.AsyncClient(
            base_url=app.base_url, timeout=60, limits=httpx.Limits(max_connections=patients + 50)
        ) as http,
        contextlib.AsyncExitStack() as streams_stack,
    ):
        ws_url = app.base_url.replace("http://", "ws://")
        streams: dict[str, SSEStream] = {}
        for patient in names:
            streams[patient] = await streams_stack.enter_async_context(
                open_sse(http, "/v1/patients/me/events", headers=bearer(tokens.patient(patient)))
            )
        await asyncio.gather(*(opened(s) for s in streams.values()))
        sockets: dict[str, WSClient] = {}
        for patient in names[::WS_EVERY]:
            sockets[patient] = await streams_stack.enter_async_context(
                open_ws(f"{ws_url}/v1/ws", token=tokens.patient(patient))
            )
            await sockets[patient].request({"type": "subscribe"}, "subscribed")

        # Both backends at once; pools sized to their concurrency (a smaller
        # pool makes callers queue for NOTIFY_REDIS_POOL_TIMEOUT_S).
        await asyncio.gather(
            backend(
                THREADED_BACKEND,
                [threaded, per_patient, THREADS],
                {**environ, "NOTIFY_REDIS_MAX_CONNECTIONS": str(THREADS)},
            ),
            backend(
                TASKS_BACKEND,
                [tasked, per_patient, TASKS],
                {**environ, "NOTIFY_REDIS_MAX_CONNECTIONS": str(TASKS)},
            ),
        )

        await asyncio.gather(
            *(
                stream.wait_for(
                    lambda s: len(ids(s)) >= per_patient, 60, f"{patient}'s {per_patient} events"
                )
                for patient, stream in streams.items()
            ),
            *(ws.wait_events(per_patient, 60) for ws in sockets.values()),
        )
        for patient, stream in streams.items():
            assert_once_in_order(stream)
            assert_published_order([f.json() for f in stream.of_type()], patient, per_patient)
        for patient, ws in sockets.items():
            assert_ws_once_in_order(ws)
            assert_published_order(ws.events, patient, per_patient)
            # The very events of the patient's SSE stream (same ids), in the same order.
            assert ws.events == [frame.json() for frame in streams[patient].of_type()]


def assert_published_order(received: list[dict[str, Any]], patient: str, per_patient: int) -> None:
    """The patient's events, each once, in the order its publisher published them."""
    assert [e["patient_id"] for e in received] == [patient] * per_patient
    assert [e["data"]["seq"] for e in received] == list(range(per_patient))
