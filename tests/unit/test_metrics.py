"""Series whose label values are known in advance are exported from the start, at 0
(so `increase()` sees the first event, and dashboards show 0 instead of nothing)."""

from __future__ import annotations

import asyncio

from prometheus_client import REGISTRY

from service import metrics
from service.brokers.refusals import OTHER, REFUSALS
from service.fanout import ws_connection
from service.routers import health
from service.services.limits import Limit
from service.services.supervisor import Supervisor


def exported(name: str, **labels: str) -> bool:
    return REGISTRY.get_sample_value(name, labels) is not None


def test_known_label_values_are_exported_before_any_event() -> None:
    for transport in metrics.TRANSPORTS:
        assert exported("notify_open_streams", transport=transport)
        assert exported("notify_deliveries_total", transport=transport)
        assert exported("notify_slow_consumers_total", transport=transport)
        assert exported("notify_stream_duration_seconds_count", transport=transport)
        for limit in metrics.CAPACITY_LIMITS:
            assert exported("notify_capacity_refusals_total", transport=transport, limit=limit)
    for outcome in metrics.EVENT_OUTCOMES:
        assert exported("notify_events_received_total", outcome=outcome)
    for reason in metrics.HISTORY_DROP_REASONS:
        assert exported("notify_history_entries_dropped_total", reason=reason)
    assert exported("notify_redis_errors_total", operation="publish")
    for stage in metrics.HEADER_TIMEOUT_STAGES:
        assert exported("notify_header_timeouts_total", stage=stage)
    for refusal in (*REFUSALS.values(), OTHER):
        assert exported("notify_redis_refusals_total", cause=refusal.cause)
        assert exported("notify_ready_degraded", cause=refusal.cause)
    assert exported("notify_ready_degraded", cause=health.SHARDS_DOWN_CAUSE)
    for reason in metrics.OUTBOX_FAILURE_REASONS:
        assert exported("notify_outbox_failures_total", reason=reason)


def test_the_label_sets_are_the_ones_the_code_uses() -> None:
    assert ws_connection.TRANSPORT in metrics.TRANSPORTS
    assert "sse" in metrics.TRANSPORTS
    assert set(metrics.CAPACITY_LIMITS) == {limit.value for limit in Limit}


async def test_a_supervised_task_exports_its_restart_counter_at_spawn() -> None:
    name = "test-metrics-idle-task"
    assert not exported("notify_task_restarts_total", task=name)
    supervisor = Supervisor()
    supervisor.spawn(name, lambda: asyncio.sleep(60))
    try:
        assert REGISTRY.get_sample_value("notify_task_restarts_total", {"task": name}) == 0
    finally:
        await supervisor.stop(timeout_s=1)
