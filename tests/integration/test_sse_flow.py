"""A published event reaches exactly the right SSE streams, through a real
uvicorn and a real Redis."""

from __future__ import annotations

import httpx

from service.config import Settings
from tests.conftest import Tokens, bearer
from tests.support.app_server import RunningApp
from tests.support.events import event
from tests.support.raw_redis import raw_publish
from tests.support.sse import open_sse


async def test_event_reaches_own_stream_only(app: RunningApp, tokens: Tokens) -> None:
    async with (
        httpx.AsyncClient(base_url=app.base_url, timeout=10) as http,
        open_sse(http, "/v1/patients/me/events", headers=bearer(tokens.patient("pt_1"))) as mine,
        open_sse(http, "/v1/patients/me/events", headers=bearer(tokens.patient("pt_2"))) as other,
    ):
        assert mine.response.status_code == 200
        assert mine.response.headers["content-type"].startswith("text/event-stream")
        assert mine.response.headers["cache-control"] == "no-cache"
        assert mine.response.headers["x-accel-buffering"] == "no"
        await mine.wait_for(lambda s: bool(s.frames), what="retry frame")
        assert mine.frames[0].retry is not None
        published = await http.post(
            "/v1/events", json=event("pt_1", location="x"), headers=bearer(tokens.service())
        )
        assert published.status_code == 201, published.text
        (frame,) = await mine.wait_events(1)
        assert frame.event == "appointment.rescheduled"
        assert frame.id == published.json()["id"]
        body = frame.json()
        assert body["patient_id"] == "pt_1"
        assert body["data"]["location"] == "x"
        # pt_2's stream got nothing but heartbeats meanwhile.
        await other.wait_for(lambda s: any(f.comments for f in s.frames), what="heartbeat")
        assert other.of_type() == []


async def test_raw_publish_is_delivered_without_id(
    app: RunningApp, tokens: Tokens, settings: Settings
) -> None:
    import json

    async with (
        httpx.AsyncClient(base_url=app.base_url, timeout=10) as http,
        open_sse(
            http, "/v1/patients/me/events", headers=bearer(tokens.patient("pt_raw"))
        ) as stream,
    ):
        await stream.wait_for(lambda s: bool(s.frames), what="retry frame")
        await raw_publish(settings, "pt_raw", json.dumps(event("pt_raw")))
        (frame,) = await stream.wait_events(1)
        assert frame.id is None
        assert frame.json()["appointment_id"] == "ap_1"
