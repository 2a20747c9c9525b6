"""A load generator for fault tests: publishes through the service's publish path
from a client of its own (as a backend process would) and remembers what was
accepted; and the checks of what a stream received."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from notify_publisher.keys import RedisKeys

from service.brokers.base import Broker, parse_stream_id
from service.brokers.factory import build_broker
from service.config import Settings
from service.failures import BrokerUnavailableError
from tests.support.publishing import publish_to
from tests.support.sse import SSEStream
from tests.support.waiting import eventually
from tests.support.ws import WSClient


@dataclass
class Load:
    """Publishes one event after another for `patients` through the service's
    publish path (as a backend process would, with a client of its own) until
    stopped; remembers what was accepted (an id returned) and what was refused."""

    broker: Broker
    keys: RedisKeys
    patients: list[str]
    accepted: dict[str, list[str]] = field(default_factory=dict)
    refused: int = 0
    # Why each refused publish was refused (the error's cause or type).
    refusals: list[str] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        n = 0
        while not self._stop.is_set():
            for patient in self.patients:
                n += 1
                try:
                    stored = await publish_to(self.broker, self.keys, patient, seq=n)
                except BrokerUnavailableError as exc:
                    self.refused += 1
                    self.refusals.append(
                        getattr(exc, "cause", "") or repr(exc.__cause__ or exc)[:120]
                    )
                    continue
                assert stored.id is not None
                self.accepted.setdefault(patient, []).append(stored.id)
            # Pacing of the load generator (not a wait for a condition).
            await asyncio.sleep(0.01)

    def count(self, patient: str) -> int:
        return len(self.accepted.get(patient, []))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Load]:
        task = asyncio.create_task(self.run())
        try:
            yield self
        finally:
            self._stop.set()
            await task


@contextlib.asynccontextmanager
async def publisher(settings: Settings, patients: list[str]) -> AsyncIterator[Load]:
    keys = RedisKeys(settings.key_prefix)
    broker = build_broker(
        settings.redis_topology(),
        control_channel=keys.control,
        max_connections=4,
        pool_timeout_s=2,
        socket_timeout_s=2,
    )

    await broker.start()
    try:
        yield Load(broker=broker, keys=keys, patients=patients)
    finally:
        await broker.stop()


def ids(stream: SSEStream) -> list[str]:
    return [f.id for f in stream.of_type() if f.id is not None]


def gaps(stream: SSEStream) -> int:
    return len([f for f in stream.events if f.event == "gap"])


async def received_all(stream: SSEStream, accepted: list[str], timeout_s: float = 20) -> None:
    await stream.wait_for(
        lambda s: set(accepted) <= set(ids(s)), timeout_s, f"all {len(accepted)} accepted events"
    )


def assert_once_in_order(stream: SSEStream) -> None:
    got = ids(stream)
    assert len(got) == len(set(got)), "a duplicate was delivered"
    assert got == sorted(got, key=parse_stream_id), "events arrived out of order"


def ws_ids(ws: WSClient) -> list[str]:
    return [str(event["id"]) for event in ws.events]


def assert_ws_once_in_order(ws: WSClient) -> None:
    got = ws_ids(ws)
    assert len(got) == len(set(got)), "a duplicate was delivered"
    assert got == sorted(got, key=parse_stream_id), "events arrived out of order"


async def wait_accepted(load: Load, patient: str, more_than: int, timeout_s: float = 20) -> None:
    await eventually(
        lambda: load.count(patient) > more_than, timeout_s=timeout_s, what=f"{patient} published"
    )
