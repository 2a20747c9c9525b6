"""The shared lifecycle of a stream, on the memory broker (no HTTP, no Redis):
an SSE connection's admission, its subscription taken with `async with`, replay
then live without duplicates, the expiry timers, and one log pair whatever ends
it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass

import pytest
from notify_publisher.events import EventCreate
from notify_publisher.keys import RedisKeys
from structlog.testing import capture_logs

from service.brokers.memory import MemoryBroker
from service.fanout.closing import CloseReason
from service.fanout.connection import SseConnection, cancel_all, schedule_expiry
from service.fanout.hub import Hub
from service.fanout.listener import HubListener
from service.services.channels import StreamScope
from service.services.errors import BrokerUnavailableError
from service.services.history import EMPTY_HISTORY_ID, HistoryReader
from service.services.limits import ConnectionLimiter, Limit
from service.services.principal import Principal, Role
from service.services.publisher import publish
from tests.support.events import event_dict

KEYS = RedisKeys("u:")
WAIT_S = 10.0


@dataclass
class Parts:
    broker: MemoryBroker
    hub: Hub
    history: HistoryReader
    limiter: ConnectionLimiter

    def connection(
        self, sub: str = "pt_1", *, expires_at: float = 0.0, queue_max: int = 10
    ) -> SseConnection:
        return SseConnection(
            hub=self.hub,
            history=self.history,
            limiter=self.limiter,
            principal=Principal(sub=sub, role=Role.PATIENT, expires_at=expires_at),
            scope=StreamScope(patient_id=sub, appointment_id=None),
            queue_max=queue_max,
            route="/v1/patients/me/events",
        )

    async def publish(self, patient_id: str = "pt_1") -> str:
        stored = await publish(
            broker=self.broker,
            keys=KEYS,
            event=EventCreate.model_validate(event_dict(patient_id)),
            history_maxlen=100,
            history_ttl_s=3600,
        )
        assert stored.event.id is not None
        return stored.event.id


@pytest.fixture
async def parts() -> AsyncIterator[Parts]:
    broker = MemoryBroker(control_channel=KEYS.control)
    history = HistoryReader(broker=broker, keys=KEYS, page_size=2)
    hub = Hub(keys=KEYS, broker=broker, history=history)
    await broker.start()
    # The hub's listener pulls what the broker receives, as under the lifespan.
    listener = asyncio.get_running_loop().create_task(
        HubListener(broker=broker, hub=hub, keys=KEYS).run()
    )
    yield Parts(broker, hub, history, ConnectionLimiter(max_total=10, max_per_subject=2))
    listener.cancel()
    await asyncio.gather(listener, return_exceptions=True)
    await broker.stop()


def pairs(logs: Sequence[Mapping[str, object]]) -> list[tuple[object, object]]:
    return [
        (line["event"], line.get("close_reason"))
        for line in logs
        if line["event"] in ("stream_opened", "stream_closed")
    ]


async def test_the_subscription_is_released_on_exit_with_its_reason(parts: Parts) -> None:
    connection = parts.connection(queue_max=1)
    assert connection.admit() is None
    with capture_logs() as logs:
        async with connection.subscribed(resume_from=None) as replay:
            # A fresh stream resumes from the history head (empty here).
            assert (replay.fresh, replay.resume_point) == (True, EMPTY_HISTORY_ID)
            assert parts.hub.channel_names == ["u:patient:{pt_1}"]
            await parts.publish()
            await parts.publish()  # the queue holds one: too slow
            await asyncio.wait_for(connection.queue.wait(), WAIT_S)
            assert connection.queue.close_reason is CloseReason.TOO_SLOW
    assert parts.hub.channel_names == []
    assert parts.limiter.total == 0
    assert pairs(logs) == [("stream_opened", None), ("stream_closed", "too_slow")]


@pytest.mark.parametrize(
    ("raised", "reason"),
    [
        (BrokerUnavailableError(), "broker_unavailable"),
        (RuntimeError("bug"), "internal_error"),
        (asyncio.CancelledError(), "client_gone"),
    ],
)
async def test_an_exception_names_the_ending(
    parts: Parts, raised: BaseException, reason: str
) -> None:
    connection = parts.connection()
    assert connection.admit() is None
    with capture_logs() as logs, pytest.raises(type(raised)):
        async with connection.subscribed(resume_from=None):
            raise raised
    assert parts.hub.queues == frozenset()
    assert parts.limiter.total == 0
    assert pairs(logs) == [("stream_opened", None), ("stream_closed", reason)]


async def test_replay_then_live_without_duplicates(parts: Parts) -> None:
    first = await parts.publish()
    missed = [await parts.publish() for _ in range(3)]
    connection = parts.connection()
    assert connection.admit() is None
    async with connection.subscribed(resume_from=first) as replay:
        assert not replay.fresh
        assert not replay.start.gap
        # A live copy of the last replayed event arrives during the replay.
        parts.hub.on_message(
            KEYS.patient_channel("pt_1"),
            (await parts.history.read_all_after("pt_1", missed[1]))[0][0]
            .model_dump_json()
            .encode(),
        )
        replayed = [e.id async for page in connection.subscription.replayed(replay) for e in page]
        assert replayed == missed
        live = await parts.publish()
        await asyncio.wait_for(connection.queue.wait(), WAIT_S)
        assert [d.id for d in connection.queue.drain()] == [live]
        assert connection.queue.delivered == 4


async def test_admission_counts_per_subject(parts: Parts) -> None:
    connections = [parts.connection() for _ in range(3)]
    assert [s.admit() for s in connections] == [None, None, Limit.SUBJECT]
    for connection in connections[:2]:
        await connection.end(reason=CloseReason.CLIENT_GONE)
    assert parts.limiter.total == 0


async def test_expiry_warns_then_closes_and_cancelling_releases() -> None:
    warned: list[int] = []
    closed = asyncio.Event()
    reasons: list[CloseReason] = []

    def close(reason: CloseReason) -> None:
        reasons.append(reason)
        closed.set()

    timers: list[asyncio.TimerHandle] = []
    expires_at = time.time() + 0.2
    schedule_expiry(expires_at, warn=warned.append, close=close, timers=timers)
    await asyncio.wait_for(closed.wait(), WAIT_S)
    assert warned == [int(expires_at)]
    assert reasons == [CloseReason.TOKEN_EXPIRED]
    # Rescheduling replaces the timers; cancelling drops them (and their owner).
    schedule_expiry(time.time() + 3600, warn=warned.append, close=close, timers=timers)
    assert len(timers) == 2
    cancel_all(timers)
    assert timers == []
    schedule_expiry(0.0, warn=warned.append, close=close, timers=timers)
    assert timers == []  # a token without expiry
