"""A client that has received nothing yet still resumes without loss: every stream
starts with the scope's history head (SSE: an id-only block right after `retry:`,
which sets EventSource's last event id; WebSocket: `subscribed.resume_point`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from service.services.history import EMPTY_HISTORY_ID
from tests.conftest import Tokens
from tests.integration.test_resume import id_key, stream
from tests.support.app_server import RunningApp
from tests.support.publishing import publish_one
from tests.support.sse import SSEStream
from tests.support.ws import open_ws


def head_block(s: SSEStream) -> str:
    """The id of the id-only block that follows `retry:`."""
    retry, block = s.frames[0], s.frames[1]
    assert retry.retry is not None
    assert block.id is not None
    assert (block.data, block.event) == ("", "message"), "an id-only block dispatches nothing"
    # Then the same id as an event page code can read (no `id:` line: the id stays).
    resume = s.frames[2]
    assert (resume.event, resume.json(), resume.id) == ("resume_point", {"id": block.id}, None)
    return block.id


async def first_frames(s: SSEStream) -> None:
    await s.wait_for(lambda st: len(st.frames) >= 3, what="retry, head id and resume point")


async def test_empty_history_starts_at_the_empty_id(app: RunningApp, tokens: Tokens) -> None:
    token = tokens.patient("pt_new")
    async with stream(app, token) as first:
        await first_frames(first)
        assert head_block(first) == EMPTY_HISTORY_ID
    # Away, having received nothing; three events are published meanwhile.
    missed = [await publish_one(app, "pt_new") for _ in range(3)]
    async with stream(app, token, **{"Last-Event-ID": EMPTY_HISTORY_ID}) as again:
        got = await again.wait_events(3)
        assert [f.id for f in got] == missed
        assert again.of_type("gap") == []


async def test_a_fresh_stream_starts_at_the_newest_id(app: RunningApp, tokens: Tokens) -> None:
    before = [await publish_one(app, "pt_old") for _ in range(2)]
    token = tokens.patient("pt_old")
    async with stream(app, token) as first:
        await first_frames(first)
        head = head_block(first)
        assert head == before[-1]
        # Nothing old is replayed to a fresh client.
        await first.wait_for(lambda st: any(f.comments for f in st.frames), what="heartbeat")
        assert first.of_type() == []
    missed = [await publish_one(app, "pt_old") for _ in range(2)]
    async with stream(app, token, **{"Last-Event-ID": head}) as again:
        assert [f.id for f in await again.wait_events(2)] == missed


async def test_an_event_published_while_subscribing_is_not_lost(
    app: RunningApp, tokens: Tokens
) -> None:
    """The race the head must not open: an event published after the head was read
    and before the subscription took effect reaches the stream (from history),
    exactly once."""
    history = app.state.history
    read_head: Callable[[str], Awaitable[str]] = history.head
    raced: list[str] = []

    async def head_then_publish(patient_id: str) -> str:
        head = await read_head(patient_id)
        raced.append(await publish_one(app, patient_id))
        return head

    history.head = head_then_publish  # type: ignore[method-assign]
    try:
        async with stream(app, tokens.patient("pt_race")) as s:
            (frame,) = await s.wait_events(1)
            assert frame.id == raced[0]
            after = await publish_one(app, "pt_race")
            got = await s.wait_events(2)
            assert [f.id for f in got] == [raced[0], after]
    finally:
        del history.head


async def test_one_appointment_stream_starts_at_the_patient_head(
    app: RunningApp, tokens: Tokens
) -> None:
    other = await publish_one(app, "pt_ap", "ap_other")
    url = "/v1/patients/me/appointments/ap_mine/events"
    async with stream(app, tokens.patient("pt_ap"), url) as s:
        await first_frames(s)
        assert head_block(s) == other


async def test_websocket_subscribed_carries_the_resume_point(
    app: RunningApp, tokens: Tokens
) -> None:
    url = app.ws_url + "/v1/ws"
    token = tokens.patient("pt_ws_head")
    async with open_ws(url, token=token) as ws:
        subscribed = await ws.request({"type": "subscribe"}, "subscribed")
        assert subscribed["resume_point"] == EMPTY_HISTORY_ID
        assert subscribed["resumed"] is False
    missed = [await publish_one(app, "pt_ws_head") for _ in range(2)]
    async with open_ws(url, token=token) as ws:
        subscribed = await ws.request(
            {"type": "subscribe", "since": EMPTY_HISTORY_ID}, "subscribed"
        )
        assert subscribed["resumed"] is True
        assert subscribed["resume_point"] == EMPTY_HISTORY_ID
        assert [e["id"] for e in await ws.wait_events(2)] == missed
    async with open_ws(url, token=token) as ws:
        subscribed = await ws.request({"type": "subscribe"}, "subscribed")
        assert subscribed["resume_point"] == missed[-1]
        assert id_key(subscribed["resume_point"]) > id_key(EMPTY_HISTORY_ID)
