"""A handed-over stream's end that fails is logged as the stream's own line.

Once a stream owns its socket (`service/transports/sse_stream.py:SseStream`,
`service/transports/ws_stream.py:WsStream`) no request cycle or session task is
left above it: an exception escaping the connection's end would reach only
asyncio's "exception was never retrieved", at the collector's whim. The stream's
end task logs it (`stream_end_failed`, with the transport and the close reason)
and still writes the access line and lets the connection go.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import pytest

from service.fanout.closing import CloseReason
from service.fanout.connection import SseConnection
from service.fanout.ws_connection import WsConnection
from tests.conftest import SettingsFactory, Tokens
from tests.support.app_server import run_app
from tests.support.logs import CapturedLog
from tests.support.socket_peers import SsePeer, WsPeer
from tests.support.waiting import eventually


class EndFailed(RuntimeError):
    pass


def failing_after(end: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """The connection's real end (detach, release, `stream_closed`), then a failure."""

    async def end_then_fail(self: Any, *, reason: CloseReason) -> None:
        await end(self, reason=reason)
        raise EndFailed("the end failed after its work")

    return end_then_fail


@pytest.mark.parametrize("transport", ["sse", "ws"])
async def test_a_failing_end_is_logged_with_the_stream(
    transport: Literal["sse", "ws"],
    make_settings: SettingsFactory,
    tokens: Tokens,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cls: Any = SseConnection if transport == "sse" else WsConnection
    monkeypatch.setattr(cls, "end", failing_after(cls.end))
    subject = f"pt_end_failure_{transport}"
    log = CapturedLog()
    try:
        async with run_app(make_settings()) as app:
            log.attach()
            token = tokens.patient(subject)
            peer = await (SsePeer.open if transport == "sse" else WsPeer.open)(app, token)
            peer.close()
            await eventually(
                lambda: any(line["event"] == "stream_end_failed" for line in log.lines),
                what="the failed end's line",
            )
            await eventually(lambda: not app.state.hub.queues, what="the hub to let go")
    finally:
        log.detach()

    (failed,) = [line for line in log.lines if line["event"] == "stream_end_failed"]
    assert failed["level"] == "error", failed
    assert failed["transport"] == transport
    assert failed["reason"] == CloseReason.CLIENT_GONE.value
    assert "EndFailed" in json.dumps(failed), failed
    assert len(log.of("stream_closed", subject)) == 1
    # The access line is still written at the end.
    stream_route = "/v1/patients/me/events" if transport == "sse" else "/v1/ws"
    requests = [line for line in log.lines if line["event"] == "request"]
    assert any(line.get("route") == stream_route for line in requests), requests
    # Nothing reached asyncio's own log.
    assert not [line for line in log.lines if line.get("logger") == "asyncio"], log.lines
