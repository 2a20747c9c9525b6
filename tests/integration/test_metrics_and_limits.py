"""Metrics move through a real flow with bounded label sets; connection limits
refuse exactly past the configured numbers and recover; readiness hysteresis."""

from __future__ import annotations

import asyncio
import contextlib

import httpx
from prometheus_client.parser import text_string_to_metric_families

from service.services.limits import ConnectionLimiter, Limit
from tests.conftest import SettingsFactory, Tokens, bearer
from tests.support.app_server import RunningApp, ServiceProcess, run_app
from tests.support.events import event_dict
from tests.support.metrics import metric
from tests.support.sse import SSEStream, open_sse, opened
from tests.support.waiting import eventually
from tests.support.ws import open_ws

ME = "/v1/patients/me/events"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def scrape(http: httpx.AsyncClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return samples(response.text)


def value(
    metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_follow_a_real_flow(app: RunningApp, tokens: Tokens) -> None:
    async with httpx.AsyncClient(base_url=app.base_url, timeout=10) as http:
        before = await scrape(http)
        async with open_sse(http, ME, headers=bearer(tokens.patient("pt_m"))) as s:
            await opened(s)
            during = await scrape(http)
            assert (
                value(during, "notify_open_streams", transport="sse")
                == value(before, "notify_open_streams", transport="sse") + 1
            )
            await http.post("/v1/events", json=event_dict("pt_m"), headers=bearer(tokens.service()))
            await s.wait_events(1)
            channel = app.state.keys.patient_channel("pt_m")
            await app.state.broker.publish_raw(channel, "{broken")
            after_publish = await scrape(http)

            async def invalid_counted() -> bool:
                m = await scrape(http)
                return value(m, "notify_events_received_total", outcome="invalid") > value(
                    before, "notify_events_received_total", outcome="invalid"
                )

            await eventually(invalid_counted, what="invalid event counted")
        assert (
            value(after_publish, "notify_events_received_total", outcome="delivered")
            >= value(before, "notify_events_received_total", outcome="delivered") + 1
        )
        assert (
            value(after_publish, "notify_deliveries_total", transport="sse")
            >= value(before, "notify_deliveries_total", transport="sse") + 1
        )
        assert (
            value(after_publish, "notify_delivery_latency_seconds_count")
            >= value(before, "notify_delivery_latency_seconds_count") + 1
        )
        assert value(after_publish, "notify_listener_up") == 1

        async def closed() -> bool:
            m = await scrape(http)
            return value(m, "notify_open_streams", transport="sse") == value(
                before, "notify_open_streams", transport="sse"
            )

        await eventually(closed, what="gauge back down")
        final = await scrape(http)
        assert (
            value(final, "notify_stream_duration_seconds_count", transport="sse")
            >= value(before, "notify_stream_duration_seconds_count", transport="sse") + 1
        )
        refused = value(final, "notify_auth_refusals_total", reason="invalid")
        await http.get(ME, headers=bearer("garbage.token.here"))
        assert (
            value(await scrape(http), "notify_auth_refusals_total", reason="invalid") == refused + 1
        )


async def test_deliveries_are_counted_exactly_on_both_transports(
    app: RunningApp, tokens: Tokens
) -> None:
    """`notify_deliveries_total` moves by exactly events x streams: the streams that
    own their sockets count once per end-of-iteration flush (`Writes`), not once per
    stream, and a flush that writes several streams, or several events to one
    stream, loses or doubles none."""
    patient = "pt_counted"
    token = tokens.patient(patient)
    sse_before = metric("notify_deliveries_total", transport="sse")
    ws_before = metric("notify_deliveries_total", transport="ws")
    async with (
        httpx.AsyncClient(base_url=app.base_url, timeout=10) as http,
        contextlib.AsyncExitStack() as stack,
    ):
        streams = [
            await stack.enter_async_context(open_sse(http, ME, headers=bearer(token)))
            for _ in range(3)
        ]
        for stream in streams:
            await opened(stream)
        ws = await stack.enter_async_context(open_ws(f"{app.ws_url}/v1/ws", token=token))
        await ws.wait_type("authenticated")
        await ws.request({"type": "subscribe"}, "subscribed")
        service = bearer(tokens.service())
        # One event alone (one delivery per stream in a flush), then four at once
        # (several per stream, when the listener takes them in one batch).
        await http.post("/v1/events", json=event_dict(patient), headers=service)
        for stream in streams:
            await stream.wait_events(1)
        await ws.wait_events(1)
        await asyncio.gather(
            *(http.post("/v1/events", json=event_dict(patient), headers=service) for _ in range(4))
        )
        for stream in streams:
            await stream.wait_events(5)
        await ws.wait_events(5)
        assert metric("notify_deliveries_total", transport="sse") == sse_before + 3 * 5
        assert metric("notify_deliveries_total", transport="ws") == ws_before + 5


async def test_label_sets_do_not_grow_with_patients(app: RunningApp, tokens: Tokens) -> None:
    service = bearer(tokens.service())
    async with httpx.AsyncClient(base_url=app.base_url, timeout=30) as http:
        async with contextlib.AsyncExitStack() as stack:
            for i in range(3):
                await opened(
                    await stack.enter_async_context(
                        open_sse(http, ME, headers=bearer(tokens.patient(f"pt_{i}")))
                    )
                )
            for i in range(10):
                await http.post("/v1/events", json=event_dict(f"pt_{i}"), headers=service)
            baseline = await http.get("/metrics")
            for i in range(1000):
                await http.post(
                    "/v1/events", json=event_dict(f"pt_x{i}", f"ap_{i}"), headers=service
                )
            grown = await http.get("/metrics")
        assert len(samples(grown.text)) == len(samples(baseline.text))
        assert "pt_" not in grown.text
        assert "ap_" not in grown.text


async def test_limits_refuse_past_the_configured_numbers_and_recover(
    make_settings: SettingsFactory, tokens: Tokens
) -> None:
    async with (
        run_app(make_settings(max_connections=3, max_connections_per_subject=2)) as app,
        httpx.AsyncClient(base_url=app.base_url, timeout=10) as http,
        contextlib.AsyncExitStack() as stack,
    ):

        async def connect(sub: str) -> SSEStream:
            return await opened(
                await stack.enter_async_context(
                    open_sse(http, ME, headers=bearer(tokens.patient(sub)))
                )
            )

        a1 = await connect("pt_a")
        await connect("pt_a")
        # Third stream of the same subject: the retry-able answer, not a 503.
        refused = await connect("pt_a")
        await refused.wait_ended()
        assert refused.response.status_code == 200
        assert [f.event for f in refused.events] == ["reconnect"]
        assert refused.events[0].retry is not None
        assert refused.events[0].json() == {"reason": "over_capacity"}
        await connect("pt_b")
        # The process is full now, whoever asks.
        full = await connect("pt_c")
        await full.wait_ended()
        assert [f.event for f in full.events] == ["reconnect"]
        # One leaves: room again.
        await a1.close()
        await eventually(lambda: app.state.limiter.total == 2, what="slot released")
        again = await connect("pt_c")
        assert not again.ended.is_set()
        assert again.events == []


def test_readiness_hysteresis() -> None:
    limiter = ConnectionLimiter(max_total=100, max_per_subject=100, high_water=0.9, low_water=0.8)
    for i in range(89):
        assert limiter.try_acquire(f"s{i}") is None
    assert not limiter.saturated
    limiter.try_acquire("s89")
    assert limiter.saturated  # 90: above the high-water mark
    for i in range(5):
        limiter.release(f"s{i}")
    assert limiter.saturated  # 85: between the marks, stays out
    for i in range(5, 10):
        limiter.release(f"s{i}")
    assert not limiter.saturated  # 80: back in
    for i in range(5):
        limiter.try_acquire(f"t{i}")
    assert not limiter.saturated  # 85 from below: stays in
    for i in range(15):
        assert limiter.try_acquire(f"u{i}") is None
    assert limiter.try_acquire("one-too-many") is Limit.PROCESS


async def test_readiness_follows_saturation(make_settings: SettingsFactory, tokens: Tokens) -> None:
    async with (
        run_app(make_settings(max_connections=10)) as app,
        httpx.AsyncClient(base_url=app.base_url, timeout=10) as http,
        contextlib.AsyncExitStack() as stack,
    ):
        streams = [
            await opened(
                await stack.enter_async_context(
                    open_sse(http, ME, headers=bearer(tokens.patient(f"pt_{i}")))
                )
            )
            for i in range(9)
        ]
        ready = await http.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["saturated"] is True
        await streams[0].close()
        await eventually(lambda: app.state.limiter.total == 8, what="one stream gone")
        assert (await http.get("/health/ready")).status_code == 200


async def test_two_workers_share_one_metrics_view(
    make_settings: SettingsFactory, tokens: Tokens
) -> None:
    proc = ServiceProcess(make_settings(workers=2))
    await asyncio.to_thread(proc.start)
    try:
        async with (
            httpx.AsyncClient(base_url=proc.base_url, timeout=10) as http,
            contextlib.AsyncExitStack() as stack,
        ):
            for i in range(6):
                await opened(
                    await stack.enter_async_context(
                        open_sse(http, ME, headers=bearer(tokens.patient(f"pt_{i}")))
                    )
                )

            async def all_counted() -> bool:
                m = samples((await http.get("/metrics")).text)
                return value(m, "notify_open_streams", transport="sse") == 6

            await eventually(all_counted, what="streams of both workers counted")
    finally:
        await asyncio.to_thread(proc.stop)
