"""Publishing and replay at the services layer (no HTTP), on real Redis and on the
memory broker, which must behave the same."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import pytest
from notify_publisher.events import MAX_EVENT_BYTES, EventCreate, EventStored
from notify_publisher.keys import RedisKeys
from notify_publisher.request import PublishRequest
from notify_publisher.topology import RedisMode, RedisTopology

from service import metrics
from service.brokers.base import Broker, HistoryPage, HistoryRead, ReadBatch
from service.brokers.factory import build_broker
from service.brokers.memory import MemoryBroker
from service.failures import BrokerRefusedError
from service.services.errors import InvalidEventError
from service.services.history import EMPTY_HISTORY_ID, HistoryReader
from service.services.publisher import publish
from tests.support.events import event_dict
from tests.support.publishing import publish_to
from tests.support.redis_server import RedisServer
from tests.support.redis_topologies import LocalCluster


@pytest.fixture(params=["redis", "cluster", "memory"])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Broker]:
    keys = RedisKeys(f"h{uuid.uuid4().hex[:8]}:")
    b: Broker
    if request.param in ("redis", "cluster"):
        if request.param == "cluster":
            cluster: LocalCluster = request.getfixturevalue("redis_cluster")
            topology = RedisTopology(mode=RedisMode.CLUSTER, url=cluster.url)
        else:
            server: RedisServer = request.getfixturevalue("redis_server")
            topology = RedisTopology(mode=RedisMode.STANDALONE, url=server.url)
        b = build_broker(
            topology,
            control_channel=keys.control,
            max_connections=4,
            pool_timeout_s=2,
            socket_timeout_s=5,
        )
    else:
        b = MemoryBroker(control_channel=keys.control)
    KEYS_OF[id(b)] = keys
    yield b
    await b.stop()
    del KEYS_OF[id(b)]


KEYS_OF: dict[int, RedisKeys] = {}


def keys_of(broker: Broker) -> RedisKeys:
    return KEYS_OF[id(broker)]


async def publish_n(
    broker: Broker, n: int, *, maxlen: int = 1000, patient: str = "pt_1"
) -> list[EventStored]:
    return [
        await publish_to(broker, keys_of(broker), patient, f"ap_{i % 3}", maxlen=maxlen)
        for i in range(n)
    ]


async def replay_all(
    reader: HistoryReader, after: str, appointment_id: str | None = None
) -> tuple[bool, list[str]]:
    start, pages = await reader.replay("pt_1", after_id=after, appointment_id=appointment_id)
    ids = [e.id async for page in pages for e in page if e.id]
    return start.gap, ids


async def test_publish_assigns_increasing_ids_and_rejects_rule_violations(broker: Broker) -> None:
    stored = await publish_n(broker, 3)
    ids = [s.id for s in stored]
    assert all(ids)
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))  # type: ignore[union-attr]
    assert all(s.published_at is not None for s in stored)
    bad = EventCreate.model_validate(event_dict(starts_at="2026-12-01T15:00:00Z"))
    with pytest.raises(InvalidEventError):
        await publish(
            broker=broker, keys=keys_of(broker), event=bad, history_maxlen=10, history_ttl_s=60
        )


async def test_replay_after_id_is_complete_and_paged(broker: Broker) -> None:
    stored = await publish_n(broker, 25)
    reader = HistoryReader(broker=broker, keys=keys_of(broker), page_size=10)
    gap, ids = await replay_all(reader, stored[4].id or "")
    assert not gap
    assert ids == [s.id for s in stored[5:]]


async def test_replay_filters_one_appointment(broker: Broker) -> None:
    stored = await publish_n(broker, 9)
    reader = HistoryReader(broker=broker, keys=keys_of(broker), page_size=4)
    gap, ids = await replay_all(reader, stored[0].id or "", appointment_id="ap_2")
    assert not gap
    assert ids == [s.id for s in stored[1:] if s.appointment_id == "ap_2"]


async def test_trimmed_history_is_a_gap(broker: Broker) -> None:
    # MAXLEN ~ trims whole macro-nodes in Redis: publish well past the limit.
    stored = await publish_n(broker, 400, maxlen=50)
    reader = HistoryReader(broker=broker, keys=keys_of(broker), page_size=500)
    gap, ids = await replay_all(reader, stored[0].id or "")
    assert gap
    assert ids
    assert ids[-1] == stored[-1].id
    # From an id that is still held: no gap.
    gap, ids = await replay_all(reader, stored[-3].id or "")
    assert not gap
    assert ids == [s.id for s in stored[-2:]]


async def test_missing_history_is_a_gap(broker: Broker) -> None:
    reader = HistoryReader(broker=broker, keys=keys_of(broker), page_size=10)
    gap, ids = await replay_all(reader, "1700000000000-0")
    assert gap
    assert ids == []


async def test_up_to_date_client_has_no_gap(broker: Broker) -> None:
    stored = await publish_n(broker, 2)
    reader = HistoryReader(broker=broker, keys=keys_of(broker), page_size=10)
    gap, ids = await replay_all(reader, stored[-1].id or "")
    assert not gap
    assert ids == []


async def test_an_id_newer_than_the_history_is_a_gap(broker: Broker) -> None:
    """What a failover that lost unreplicated writes leaves: the client holds an id
    the history no longer has, and whatever followed it may be lost too."""
    stored = await publish_n(broker, 2)
    last = stored[-1].id or ""
    ms, _, seq = last.partition("-")
    lost = f"{int(ms) + 5}-{seq}"
    reader = HistoryReader(broker=broker, keys=keys_of(broker), page_size=10)
    gap, ids = await replay_all(reader, lost)
    assert gap
    assert ids == []


async def test_replay_drops_what_the_live_path_drops(broker: Broker) -> None:
    """A raw writer can put anything into history: replay applies the live
    path's rules (size limit, strict shape) and counts what it leaves out."""
    keys = keys_of(broker)
    first = (await publish_n(broker, 1))[0]
    base = event_dict("pt_1", "ap_raw")
    oversized = {**base, "data": {**base["data"], "note": "n" * MAX_EVENT_BYTES}}
    integer_time = {**base, "data": {**base["data"], "starts_at": 0}}
    for raw in (oversized, integer_time):
        # The publish script's KEYS and ARGV as a raw writer would send them.
        raw_json = json.dumps(raw, separators=(",", ":"))
        channel = keys.patient_channel("pt_1")
        command = "SPUBLISH" if broker.sharded else "PUBLISH"
        request = PublishRequest(
            keys=(keys.history("pt_1"),), args=(raw_json, 1000, 600, channel, command)
        )
        await broker.publish_events([request], None)
    last = (await publish_n(broker, 1))[0]

    def dropped(reason: str) -> float:
        return float(metrics.HISTORY_ENTRIES_DROPPED.labels(reason=reason)._value.get())

    before = {reason: dropped(reason) for reason in ("too_large", "invalid")}
    reader = HistoryReader(broker=broker, keys=keys, page_size=10)
    gap, ids = await replay_all(reader, first.id or "")
    assert not gap
    assert ids == [last.id]
    assert dropped("too_large") == before["too_large"] + 1
    assert dropped("invalid") == before["invalid"] + 1


async def test_replay_from_the_empty_history_id(broker: Broker) -> None:
    """`0-0` is where a client stands that came while history was empty."""
    reader = HistoryReader(broker=broker, keys=keys_of(broker), page_size=500)
    assert await reader.head("pt_1") == EMPTY_HISTORY_ID
    gap, ids = await replay_all(reader, EMPTY_HISTORY_ID)
    assert (gap, ids) == (False, [])
    stored = await publish_n(broker, 3)
    assert await reader.head("pt_1") == stored[-1].id
    gap, ids = await replay_all(reader, EMPTY_HISTORY_ID)
    assert not gap
    assert ids == [s.id for s in stored]


async def test_replay_from_the_empty_history_id_sees_trimming(broker: Broker) -> None:
    await publish_n(broker, 400, maxlen=50)
    reader = HistoryReader(broker=broker, keys=keys_of(broker), page_size=500)
    gap, _ = await replay_all(reader, EMPTY_HISTORY_ID)
    assert gap


async def test_read_batch_answers_what_each_read_would(broker: Broker) -> None:
    """One loop iteration's reads in one call (issue 23) answer exactly what the
    reads one by one do, on every broker."""
    keys = keys_of(broker)
    stored = await publish_n(broker, 3)
    await broker.set_value(keys.revoked_sub("pt_1"), "12.5", ttl_s=60)
    full, empty = keys.history("pt_1"), keys.history("pt_none")
    batch = ReadBatch(
        keys=[keys.revoked_sub("pt_1"), keys.revoked_jti("j1")],
        heads=[full, empty],
        pages=[
            HistoryRead(history_key=full, after_id=stored[0].id or "", count=10),
            HistoryRead(history_key=empty, after_id=EMPTY_HISTORY_ID, count=10),
        ],
    )
    replies = await broker.read_batch(batch)
    assert replies.values == ["12.5", None]
    assert replies.heads == [stored[-1].id, None]
    assert replies.pages == [
        await broker.read_history(r.history_key, after_id=r.after_id, count=r.count)
        for r in batch.pages
    ]
    assert [e.id for e in replies.pages[0].entries] == [s.id for s in stored[1:]]  # type: ignore[union-attr]


async def test_a_refused_read_in_the_pipeline_fails_only_itself(
    redis_server: RedisServer,
) -> None:
    """Standalone Redis: one pipeline for the whole batch; a key of the wrong type
    fails its own page, and the values, heads and other pages still arrive."""
    keys = RedisKeys(f"h{uuid.uuid4().hex[:8]}:")
    broker = build_broker(
        RedisTopology(mode=RedisMode.STANDALONE, url=redis_server.url),
        control_channel=keys.control,
        max_connections=4,
        pool_timeout_s=2,
        socket_timeout_s=5,
    )
    try:
        stored = await publish_to(broker, keys, "pt_1")
        # A string where a history stream should be: XRANGE answers WRONGTYPE.
        await broker.set_value(keys.history("pt_bad"), "x", ttl_s=60)
        await broker.set_value(keys.revoked_jti("j1"), "1.0", ttl_s=60)
        replies = await broker.read_batch(
            ReadBatch(
                keys=[keys.revoked_jti("j1")],
                heads=[keys.history("pt_1"), keys.history("pt_bad")],
                pages=[
                    HistoryRead(history_key=keys.history("pt_bad"), after_id="0-0", count=10),
                    HistoryRead(history_key=keys.history("pt_1"), after_id="0-0", count=10),
                ],
            )
        )
        assert replies.values == ["1.0"]
        assert replies.heads[0] == stored.id
        assert isinstance(replies.heads[1], BrokerRefusedError)
        assert isinstance(replies.pages[0], BrokerRefusedError)
        page = replies.pages[1]
        assert isinstance(page, HistoryPage)
        assert [e.id for e in page.entries] == [stored.id]
    finally:
        await broker.stop()
