"""`notify relay`'s /metrics: the relay's own families only, so that notify serve's
gauges (the pub/sub listener, open streams), which read 0 in a relay, never reach
Prometheus from a relay pod (NotifyRedisListenerDown would page for each)."""

from __future__ import annotations

import httpx

from service.outbox.probes import ProbeServer


async def test_relay_metrics_hold_the_outbox_and_not_the_stream_service() -> None:
    probes = ProbeServer(lambda: (True, {}))
    port = await probes.start("127.0.0.1", 0)
    try:
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://127.0.0.1:{port}/metrics")
    finally:
        await probes.stop()
    assert response.status_code == 200
    names = {line.split()[2] for line in response.text.splitlines() if line.startswith("# TYPE")}
    assert "notify_outbox_backlog_rows" in names
    assert "notify_outbox_oldest_pending_age_seconds" in names
    assert "notify_redis_refusals_total" in names  # the failures of its publishes
    assert "process_cpu_seconds" in names or "python_info" in names
    assert "notify_listener_up" not in names
    assert "notify_open_streams" not in names
