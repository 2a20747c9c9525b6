"""Redis Cluster faults on a real local cluster (3 primaries, a replica each) that
each test starts for itself: slot migration and failovers under publish load,
one shard down, and the control channel across nodes. What is asserted is what
clients received: every accepted event once, in order, or a `gap`; never silence.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from redis.crc import key_slot

from service.brokers.cluster import ClusterBroker
from service.config import Settings
from tests.conftest import SettingsFactory, Tokens, bearer
from tests.support.app_server import RunningApp, run_app
from tests.support.load import (
    assert_once_in_order,
    gaps,
    ids,
    publisher,
    received_all,
    wait_accepted,
)
from tests.support.publishing import publish_to
from tests.support.redis_server import RedisServer
from tests.support.redis_topologies import LocalCluster
from tests.support.slot_map import stale_slot_map
from tests.support.sse import open_sse, opened
from tests.support.waiting import eventually

pytestmark = [pytest.mark.slow, pytest.mark.own_topology]

ME = "/v1/patients/me/events"


@pytest.fixture
def own_cluster() -> Iterator[LocalCluster]:
    cluster = LocalCluster()
    cluster.start()
    yield cluster
    cluster.stop()


def cluster_settings(
    make_settings: SettingsFactory, cluster: LocalCluster, **extra: object
) -> Settings:
    return make_settings(redis_url=cluster.url, redis_mode="cluster", **extra)


def patient_on(cluster: LocalCluster, primary: RedisServer, avoid: set[str] = frozenset()) -> str:  # type: ignore[assignment]
    """A patient id whose slot `primary` owns."""
    for i in range(10_000):
        patient = f"pt_{i}"
        if patient not in avoid and cluster.primary_for(patient).port == primary.port:
            return patient
    raise AssertionError("no patient id found for that shard")


def shard_connections(app: RunningApp) -> dict[str, int]:
    broker = app.state.broker
    assert isinstance(broker, ClusterBroker)
    return broker.shard_connections


@pytest.mark.parametrize("fault", ["slot migration", "CLUSTER FAILOVER"])
async def test_the_slot_moves_under_load_and_nothing_is_lost_or_repeated(
    own_cluster: LocalCluster, make_settings: SettingsFactory, tokens: Tokens, fault: str
) -> None:
    """The patient's slot gets a new owner while events are published: by
    `redis-cli --cluster reshard`'s steps to another primary, or by a manual
    failover to its replica. The old owner drops the shard channel; the stream
    follows it, backfilled from history: every event once, in order."""
    await slot_moves_under_load(own_cluster, make_settings, tokens, fault, stale_reads=0)


async def test_a_slot_map_read_before_the_failover_reached_that_node_is_read_again(
    own_cluster: LocalCluster, make_settings: SettingsFactory, tokens: Tokens
) -> None:
    """The slot map is read from any node, which may not have heard of the
    failover yet (seen in CI: the stream subscribed on the demoted primary again
    and stalled). Here the first two reads after the demoted primary dropped the
    channel give the map from before: the stream still follows the slot to its
    new primary, every event once, in order."""
    await slot_moves_under_load(
        own_cluster, make_settings, tokens, "CLUSTER FAILOVER", stale_reads=2
    )


async def slot_moves_under_load(
    cluster: LocalCluster,
    make_settings: SettingsFactory,
    tokens: Tokens,
    fault: str,
    *,
    stale_reads: int,
) -> None:
    settings = cluster_settings(make_settings, cluster)
    primary = cluster.primary_nodes()[0]
    patient = patient_on(cluster, primary)
    if fault == "slot migration":
        new_owner = next(p for p in cluster.primary_nodes() if p.port != primary.port)

        def move() -> None:
            cluster.migrate_slot(key_slot(patient.encode()), new_owner)
    else:
        (new_owner,) = cluster.replicas_of(primary)

        def move() -> None:
            cluster.manual_failover(new_owner)

    async with (
        run_app(settings) as app,
        httpx.AsyncClient(base_url=app.base_url, timeout=30) as http,
        open_sse(http, ME, headers=bearer(tokens.patient(patient))) as stream,
        publisher(settings, [patient]) as load,
    ):
        await opened(stream)
        broker = app.state.broker
        assert isinstance(broker, ClusterBroker)
        with stale_slot_map(broker.client.nodes_manager, stale_reads) as taken:
            async with load.running():
                await wait_accepted(load, patient, 10)
                await asyncio.to_thread(move)
                before = load.count(patient)
                # Publishing goes on after the slot moved: the stream follows it.
                await wait_accepted(load, patient, before + 20)
            await received_all(stream, load.accepted[patient])
            assert_once_in_order(stream)
            assert gaps(stream) == 0
            assert load.refused == 0, load.refusals
            # The process' shard connection for that channel is now on the new owner.
            await eventually(
                lambda: f"127.0.0.1:{new_owner.port}" in shard_connections(app),
                what="a shard connection on the slot's new owner",
            )
        assert taken == [stale_reads]


async def test_killed_primary_every_accepted_event_arrives_or_a_gap_is_sent(
    own_cluster: LocalCluster, make_settings: SettingsFactory, tokens: Tokens
) -> None:
    settings = cluster_settings(make_settings, own_cluster)
    primary = own_cluster.primary_nodes()[0]
    patient = patient_on(own_cluster, primary)
    (replica,) = own_cluster.replicas_of(primary)
    async with (
        run_app(settings) as app,
        httpx.AsyncClient(base_url=app.base_url, timeout=30) as http,
        open_sse(http, ME, headers=bearer(tokens.patient(patient))) as stream,
        publisher(settings, [patient]) as load,
    ):
        await opened(stream)
        async with load.running():
            await wait_accepted(load, patient, 10)
            await asyncio.to_thread(own_cluster.kill, primary)
            await asyncio.to_thread(own_cluster.wait_promoted, primary, key_slot(patient.encode()))
            before = load.count(patient)
            await wait_accepted(load, patient, before + 20)
        # Published after the promotion: live again on the new primary.
        after_promotion = load.accepted[patient][before:]
        await received_all(stream, after_promotion)
        assert_once_in_order(stream)
        lost = set(load.accepted[patient]) - set(ids(stream))
        if lost:
            # Accepted by the old primary, never replicated: the client was told.
            assert gaps(stream) >= 1, f"{len(lost)} accepted events lost in silence"
        assert f"127.0.0.1:{replica.port}" in shard_connections(app)
        ready = await http.get("/health/ready")
        assert ready.status_code == 200


async def test_one_shard_down_affects_only_its_patients(
    own_cluster: LocalCluster, make_settings: SettingsFactory, tokens: Tokens
) -> None:
    settings = cluster_settings(make_settings, own_cluster)
    down, up = own_cluster.primary_nodes()[:2]
    hit = patient_on(own_cluster, down)
    spared = patient_on(own_cluster, up)
    async with (
        run_app(settings) as app,
        httpx.AsyncClient(base_url=app.base_url, timeout=30) as http,
        open_sse(http, ME, headers=bearer(tokens.patient(hit))) as hit_stream,
        open_sse(http, ME, headers=bearer(tokens.patient(spared))) as spared_stream,
        publisher(settings, [hit, spared]) as load,
    ):
        await opened(hit_stream)
        await opened(spared_stream)
        # What the shard held before it went: lost with it (no persistence).
        before = [(await publish_to(load.broker, load.keys, hit)).id for _ in range(2)]
        await received_all(hit_stream, [i for i in before if i is not None])
        (replica,) = own_cluster.replicas_of(down)
        # The whole shard: its primary and the replica that could replace it.
        await asyncio.to_thread(own_cluster.kill, replica)
        await asyncio.to_thread(own_cluster.kill, down)
        async with load.running():
            await wait_accepted(load, spared, 20)

            async def degraded() -> bool:
                # A process whose control connection was on the dead node moves
                # it to another node first (readiness 503 meanwhile).
                ready = await http.get("/health/ready")
                return ready.status_code == 200 and ready.json()["status"] == "degraded"

            await eventually(degraded, timeout_s=20, what="readiness 200, degraded")
            body = (await http.get("/health/ready")).json()
            assert (body["redis_shards"], body["redis_shards_down"]) == (3, 1)
            assert (await http.get("/health/live")).status_code == 200
            # The shard's patients wait: a publish is a 503, a new stream the
            # retry-able answer (a 200 event stream that says reconnect).
            service = bearer(tokens.service())
            refused = await http.post("/v1/events", json=_event(hit), headers=service, timeout=30)
            assert refused.status_code == 503
            assert refused.headers["retry-after"]
            async with open_sse(http, ME, headers=bearer(tokens.patient(hit))) as again:
                await again.wait_ended(timeout_s=30)
                assert again.response.status_code == 200
                assert [f.event for f in again.events] == ["reconnect"]
            assert load.count(hit) == 0
        await received_all(spared_stream, load.accepted[spared])
        assert_once_in_order(spared_stream)

        # The shard comes back (empty: no persistence): ready again, and its
        # patients' streams live again, told of the gap.
        await asyncio.to_thread(down.start)
        await asyncio.to_thread(replica.start)
        await asyncio.to_thread(own_cluster.wait_healthy, 40)

        async def ready_again() -> bool:
            response = await http.get("/health/ready")
            return response.status_code == 200 and response.json()["status"] == "ready"

        await eventually(ready_again, timeout_s=30, what="readiness back to ready")
        async with publisher(settings, [hit]) as later, later.running():
            await wait_accepted(later, hit, 3)
        await received_all(hit_stream, later.accepted[hit], timeout_s=30)
        # The history it resumed from is gone: told, not silent.
        assert gaps(hit_stream) >= 1
        assert_once_in_order(hit_stream)


def _event(patient: str) -> dict[str, object]:
    from tests.support.events import event_dict

    return event_dict(patient)


async def test_control_channel_reaches_processes_on_other_nodes(
    redis_cluster: LocalCluster, make_settings: SettingsFactory, tokens: Tokens
) -> None:
    """Each process' control connection is on its own seed node; a revocation
    announced through one process closes a stream held by the other."""
    first, second = redis_cluster.primary_nodes()[:2]
    base = make_settings(redis_mode="cluster", redis_url=f"redis://127.0.0.1:{first.port}")
    other = base.model_copy(update={"redis_url": f"redis://127.0.0.1:{second.port}"})
    token = tokens.patient("pt_ctl", ttl_s=600)
    async with (
        run_app(base) as a,
        run_app(other) as b,
        httpx.AsyncClient(base_url=b.base_url, timeout=10) as http_b,
        httpx.AsyncClient(base_url=a.base_url, timeout=10) as http_a,
        open_sse(http_b, ME, headers=bearer(token)) as stream,
    ):
        await opened(stream)
        assert isinstance(a.state.broker, ClusterBroker)
        assert isinstance(b.state.broker, ClusterBroker)
        assert a.state.broker.control_node == f"127.0.0.1:{first.port}"
        assert b.state.broker.control_node == f"127.0.0.1:{second.port}"
        response = await http_a.post(
            "/v1/revocations",
            json={"sub": "pt_ctl", "until": (datetime.now(UTC) + timedelta(hours=1)).isoformat()},
            headers=bearer(tokens.admin()),
        )
        assert response.status_code == 201, response.text
        await stream.wait_ended(timeout_s=5)
        assert stream.events[-1].event == "closed"
        assert stream.events[-1].json() == {"reason": "revoked"}


async def test_one_sharded_connection_per_shard_primary_not_per_client(
    redis_cluster: LocalCluster, make_settings: SettingsFactory, tokens: Tokens
) -> None:
    settings = cluster_settings(make_settings, redis_cluster)
    primaries = redis_cluster.primary_nodes()
    patients = [patient_on(redis_cluster, p, avoid={"pt_0"}) for p in primaries]
    baseline = {p.port: redis_cluster.pubsub_clients(p) for p in primaries}
    async with (
        run_app(settings) as app,
        httpx.AsyncClient(base_url=app.base_url, timeout=10) as http,
        contextlib.AsyncExitStack() as stack,
    ):
        streams = []
        for patient in patients:
            for _ in range(5):
                streams.append(
                    await stack.enter_async_context(
                        open_sse(http, ME, headers=bearer(tokens.patient(patient)))
                    )
                )
        for stream in streams:
            await opened(stream)
        control = app.state.broker.control_node  # type: ignore[attr-defined]
        for primary in primaries:
            extra = 1 if control == f"127.0.0.1:{primary.port}" else 0
            # 5 clients of one patient on each shard: one sharded connection.
            assert redis_cluster.pubsub_clients(primary) == baseline[primary.port] + 1 + extra
        assert sorted(shard_connections(app).values()) == [1, 1, 1]
