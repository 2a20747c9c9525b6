"""Tickets live in Redis, not in a process: issued by one `notify serve`, redeemed
and deleted through another, and still good after the server restarts, which is
what a page doing nothing but `new EventSource(url + '?ticket=…')` relies on."""

from __future__ import annotations

import asyncio

import httpx
from notify_publisher.keys import RedisKeys

from service.brokers.factory import build_broker
from service.config import Settings
from tests.conftest import SettingsFactory, Tokens, bearer
from tests.support.app_server import ServiceProcess, running
from tests.support.events import event_dict
from tests.support.eventsource import event_source
from tests.support.publishing import publish_to
from tests.support.sse import open_sse

ME = "/v1/patients/me/events"


async def publish_direct(settings: Settings, patient: str = "pt_1") -> str:
    """Publish through Redis while no service process is up (as `notify publish` does)."""
    keys = RedisKeys(settings.key_prefix)
    broker = build_broker(
        settings.redis_topology(),
        control_channel=keys.control,
        max_connections=2,
        pool_timeout_s=2,
        socket_timeout_s=5,
    )
    try:
        stored = await publish_to(broker, keys, patient, maxlen=100)
    finally:
        await broker.stop()
    assert stored.id is not None
    return stored.id


async def test_ticket_issued_by_one_process_is_redeemed_and_deleted_by_another(
    make_settings: SettingsFactory, tokens: Tokens
) -> None:
    settings = make_settings()
    token = tokens.patient("pt_1")
    async with (
        running(ServiceProcess(settings)) as a,
        running(ServiceProcess(settings)) as b,
        httpx.AsyncClient(timeout=10) as http,
    ):
        issued = await http.post(f"{a.base_url}/v1/stream-tickets", headers=bearer(token))
        assert issued.status_code == 201
        ticket = issued.json()["ticket"]
        async with open_sse(http, f"{b.base_url}{ME}?ticket={ticket}") as stream:
            assert stream.response.status_code == 200
            await stream.wait_for(lambda s: bool(s.frames), what="stream open on b")
            published = await http.post(
                f"{a.base_url}/v1/events", json=event_dict("pt_1"), headers=bearer(tokens.service())
            )
            (frame,) = await stream.wait_events(1)
            assert frame.id == published.json()["id"]
            # Deleted through a, the stream on b ends.
            deleted = await http.delete(
                f"{a.base_url}/v1/stream-tickets/{ticket}", headers=bearer(token)
            )
            assert deleted.status_code == 204
            await stream.wait_ended(timeout_s=2)
            assert stream.events[-1].event == "closed"
        refused = await http.get(f"{b.base_url}{ME}?ticket={ticket}")
        assert refused.status_code == 401


async def test_plain_eventsource_with_a_ticket_survives_a_server_restart(
    make_settings: SettingsFactory, tokens: Tokens
) -> None:
    # A short retry keeps the test quick; the browser logic is the same.
    settings = make_settings(sse_retry_ms=200)
    proc = ServiceProcess(settings)
    await asyncio.to_thread(proc.start)
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            issued = await http.post(
                f"{proc.base_url}/v1/stream-tickets", headers=bearer(tokens.patient("pt_1"))
            )
            assert issued.status_code == 201
            url = f"{proc.base_url}{ME}?ticket={issued.json()['ticket']}"
            async with event_source(http, url) as source:
                await source.wait_for(lambda s: s.opened == 1, what="first connection")
                first = await publish_direct(settings)
                await source.wait_for(lambda s: len(s.events) == 1, what="first event")

                await asyncio.to_thread(proc.stop)
                missed = await publish_direct(settings)
                await asyncio.to_thread(proc.start)

                # Same URL, same ticket, `Last-Event-ID: first`: the missed event is
                # replayed, then live ones follow; the EventSource never gave up.
                await source.wait_for(lambda s: s.opened >= 2, timeout_s=15, what="reconnect")
                await source.wait_for(lambda s: len(s.events) == 2, what="replayed event")
                live = await publish_direct(settings)
                await source.wait_for(lambda s: len(s.events) == 3, what="live event")
                assert [f.id for f in source.events] == [first, missed, live]
                assert not source.closed_for_good
    finally:
        await asyncio.to_thread(proc.stop)
