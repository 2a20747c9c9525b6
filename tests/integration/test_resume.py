"""Resume on SSE: Last-Event-ID replays what history holds, then live, with no gap
and no duplicate, even while a publisher keeps publishing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest

from service.config import Settings
from tests.conftest import SettingsFactory, Tokens, bearer
from tests.support.app_server import RunningApp, run_app
from tests.support.publishing import publish_one
from tests.support.sse import SSEStream, open_sse

ME = "/v1/patients/me/events"


def id_key(event_id: str | None) -> tuple[int, int]:
    assert event_id is not None
    ms, seq = event_id.split("-")
    return int(ms), int(seq)


@contextlib.asynccontextmanager
async def stream(
    app: RunningApp, token: str, url: str = ME, **headers: str
) -> AsyncIterator[SSEStream]:
    async with (
        httpx.AsyncClient(base_url=app.base_url, timeout=30) as http,
        open_sse(http, url, headers={**bearer(token), **headers}) as s,
    ):
        await s.wait_for(lambda st: bool(st.frames), what="first frame")
        yield s


async def test_reconnect_replays_exactly_the_missed_events(app: RunningApp, tokens: Tokens) -> None:
    token = tokens.patient("pt_1")
    async with stream(app, token) as first:
        await publish_one(app)
        (seen,) = await first.wait_events(1)
    missed = [await publish_one(app) for _ in range(50)]
    async with stream(app, token, **{"Last-Event-ID": seen.id or ""}) as second:
        frames = await second.wait_events(50)
        assert [f.id for f in frames] == missed
        live = await publish_one(app)
        frames = await second.wait_events(51)
        assert frames[-1].id == live
        assert not [f for f in second.events if f.event == "gap"]


async def test_query_parameter_resumes_on_first_connect(app: RunningApp, tokens: Tokens) -> None:
    ids = [await publish_one(app) for _ in range(3)]
    async with stream(app, tokens.patient("pt_1"), f"{ME}?last_event_id={ids[0]}") as s:
        frames = await s.wait_events(2)
        assert [f.id for f in frames] == ids[1:]


async def test_no_gap_no_duplicate_while_publishing_during_replay(
    app: RunningApp, tokens: Tokens
) -> None:
    token = tokens.patient("pt_1")
    first_id = await publish_one(app)
    backlog = [await publish_one(app) for _ in range(200)]
    published: list[str] = []
    stop = asyncio.Event()

    async def publisher() -> None:
        while not stop.is_set():
            published.append(await publish_one(app))
            await asyncio.sleep(0.002)

    task = asyncio.create_task(publisher())
    try:
        for _round in range(3):
            async with stream(app, token, **{"Last-Event-ID": first_id}) as s:
                await s.wait_events(len(backlog) + 20, timeout_s=30)
                target = published[-1]
                await s.wait_for(
                    lambda st: any(f.id == target for f in st.events),  # noqa: B023
                    what="catch up",
                )
                ids = [f.id for f in s.of_type()]
            expected_prefix = backlog + published
            assert ids == expected_prefix[: len(ids)], "gap or duplicate in the id sequence"
            keys = [id_key(i) for i in ids]
            assert keys == sorted(set(keys))
    finally:
        stop.set()
        await task


async def test_old_id_beyond_trimmed_history_gets_gap_first(
    make_settings: SettingsFactory, tokens: Tokens
) -> None:
    async with run_app(make_settings(history_maxlen=20)) as app:
        first = await publish_one(app)
        for _ in range(300):
            await publish_one(app)
        async with stream(app, tokens.patient("pt_1"), **{"Last-Event-ID": first}) as s:
            await s.wait_events(1)
            kinds = [f.event for f in s.events]
            assert kinds[0] == "gap"
            assert s.events[0].json()["oldest_id"] is not None


async def test_appointment_stream_resumes_filtered(app: RunningApp, tokens: Tokens) -> None:
    start = await publish_one(app, appointment_id="ap_1")
    mixed = [
        (await publish_one(app, appointment_id=ap), ap) for ap in ["ap_1", "ap_2", "ap_1", "ap_2"]
    ]
    url = "/v1/patients/me/appointments/ap_2/events"
    async with stream(app, tokens.patient("pt_1"), url, **{"Last-Event-ID": start}) as s:
        frames = await s.wait_events(2)
        assert [f.id for f in frames] == [i for i, ap in mixed if ap == "ap_2"]
        await publish_one(app, appointment_id="ap_1")
        live = await publish_one(app, appointment_id="ap_2")
        frames = await s.wait_events(3)
        assert frames[-1].id == live
        assert all(f.json()["appointment_id"] == "ap_2" for f in s.of_type())


@pytest.mark.parametrize("bad", ["garbage", "1-2-3", ""])
async def test_unparseable_last_event_id_is_ignored(
    app: RunningApp, tokens: Tokens, bad: str, settings: Settings
) -> None:
    async with stream(app, tokens.patient("pt_1"), **{"Last-Event-ID": bad}) as s:
        live = await publish_one(app)
        (frame,) = await s.wait_events(1)
        assert frame.id == live
