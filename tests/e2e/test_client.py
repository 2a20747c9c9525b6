"""The browser client the service serves (`/v1/client.js`), imported cross-origin by a
page and run in Chromium: gap, renewal on `token_expiring`, revocation, recovery after
the browser's EventSource gave up, and the WebSocket flows."""

from __future__ import annotations

import json
from typing import Any

import jwt

from tests.e2e.conftest import SSE_RETRY_MS, BrowserPage, mint, new_patient

START_CLIENT = """
({ base, tokens, transport, lastEventId }) => {
  window.tokenQueue = tokens;
  window.tokenCalls = 0;
  const seen = (window.seen = { events: [], states: [], gaps: [], closed: [], errors: [] });
  const client = new window.notify.NotifyClient({
    baseUrl: base,
    transport,
    lastEventId,
    initialBackoffMs: 200,
    maxBackoffMs: 2000,
    getToken: () => {
      window.tokenCalls += 1;
      return window.tokenQueue.length > 1 ? window.tokenQueue.shift() : window.tokenQueue[0];
    },
    onEvent: (event) => seen.events.push(event.id),
    onGap: (gap) => seen.gaps.push(gap),
    onStateChange: (state) => seen.states.push(state),
    onClosed: (reason) => seen.closed.push(reason),
    onError: (error) => seen.errors.push(String(error.message)),
  });
  window.client = client;
  client.start();
}
"""


def start_client(
    p: BrowserPage,
    tokens: list[str],
    *,
    transport: str = "sse",
    last_event_id: str | None = None,
) -> None:
    p.load_client()
    p.js(
        START_CLIENT,
        {
            "base": p.stack.base_url,
            "tokens": tokens,
            "transport": transport,
            "lastEventId": last_event_id,
        },
    )


def seen(p: BrowserPage) -> dict[str, Any]:
    result: dict[str, Any] = p.js("() => window.seen")
    return result


def test_gap_when_history_was_trimmed_calls_on_gap(app_page: BrowserPage) -> None:
    p, stack = app_page, app_page.stack
    patient = new_patient()
    first = stack.publish(patient, "ap_0")
    # HISTORY_MAXLEN (5) newer events: `first`'s successor is trimmed away.
    rest = [stack.publish(patient, f"ap_{n}") for n in range(1, 8)]
    start_client(p, [mint(patient)], last_event_id=first)
    p.wait("() => window.seen.events.length === 5")
    got = seen(p)
    assert got["gaps"] == [{"oldest_id": rest[-5]}]
    assert got["events"] == rest[-5:]
    assert f"last_event_id={first}" in p.net.streams()[0].url


def test_token_expiring_renews_with_no_gap(app_page: BrowserPage) -> None:
    p, stack = app_page, app_page.stack
    patient = new_patient()
    short = mint(patient, ttl_s=6)
    expires_at = jwt.decode(short, options={"verify_signature": False})["exp"]
    start_client(p, [short, mint(patient)])
    p.wait_subscribed()
    first = stack.publish(patient, "ap_1")
    p.wait("() => window.seen.events.length === 1")
    # `token_expiring` at half the lifetime: a new ticket, a second stream from `first`.
    p.wait_subscribed(2)
    assert p.js("() => window.tokenCalls") == 2
    during = stack.publish(patient, "ap_2")
    p.wait("() => window.seen.events.length === 2")
    # Past the first token's expiry: its stream has ended, the renewed one carries on.
    p.wait("(exp) => Date.now() > exp * 1000 + 1000", expires_at)
    after = stack.publish(patient, "ap_3")
    p.wait("() => window.seen.events.length === 3")
    got = seen(p)
    assert got["events"] == [first, during, after]
    assert got["gaps"] == []
    assert got["states"] == ["connecting", "open"], "the renewal was not seamless"
    streams = p.net.streams()
    assert len(streams) == 2
    assert f"last_event_id={first}" in streams[1].url
    assert streams[0].url != streams[1].url  # a new ticket


def test_revocation_closes_for_good_with_no_reconnect_loop(app_page: BrowserPage) -> None:
    p, stack = app_page, app_page.stack
    patient = new_patient()
    start_client(p, [mint(patient)])
    p.wait_subscribed()
    stack.revoke_subject(patient)
    p.wait("() => window.seen.closed.length === 1")
    closed_at = p.js("() => Date.now()")
    got = seen(p)
    assert got["closed"] == ["revoked"]
    assert got["states"][-1] == "closed"
    assert p.js("() => window.client.state") == "closed"
    # A raw EventSource would reconnect after `retry:` (then get a 401). Three retry
    # periods later the client has made no new request.
    p.wait("([t, ms]) => Date.now() > t + 3 * ms", [closed_at, SSE_RETRY_MS])
    assert len(p.net.streams()) == 1
    assert p.js("() => window.tokenCalls") == 1


def test_client_recovers_after_eventsource_gave_up(app_page: BrowserPage) -> None:
    """No service at all for a while: nginx answers 502, Chromium's EventSource closes
    for good; the client gets a new ticket and resumes with `last_event_id`."""
    p, stack = app_page, app_page.stack
    patient = new_patient()
    start_client(p, [mint(patient)])
    p.wait_subscribed()
    first = stack.publish(patient, "ap_1")
    p.wait("() => window.seen.events.length === 1")
    stack.stop_service()
    p.until(
        lambda: any(502 in (r.status, r.wire_status) for r in p.net.streams()),
        "EventSource's reconnect to get nginx's 502",
    )
    p.wait("() => window.client.state === 'reconnecting'")
    stack.start_service()
    missed = stack.publish(patient, "ap_2")
    p.wait("() => window.seen.events.length === 2")
    assert seen(p)["events"] == [first, missed]
    resumed = [r for r in p.net.streams() if r.status == 200]
    assert len(resumed) >= 2
    assert f"last_event_id={first}" in resumed[-1].url
    assert resumed[-1].url != resumed[0].url  # a new ticket
    p.wait("() => window.client.state === 'open'")


def test_websocket_ticket_command_and_since_after_restart(app_page: BrowserPage) -> None:
    p, stack = app_page, app_page.stack
    patient = new_patient()
    start_client(p, [mint(patient)], transport="websocket")
    p.wait("() => window.client.state === 'open'")
    first = stack.publish(patient, "ap_1")
    p.wait("() => window.seen.events.length === 1")
    reply = p.js("() => window.client.command('confirm', 'ap_1')")
    assert reply["type"] == "command_accepted"
    assert reply["command_id"]
    stack.restart()
    missed = stack.publish(patient, "ap_2")
    p.wait("() => window.seen.events.length === 2")
    got = seen(p)
    assert got["events"] == [first, missed]
    assert "reconnecting" in got["states"]
    subscribes = [json.loads(f) for f in p.net.ws_sent if '"subscribe"' in f]
    assert subscribes[0] == {"type": "subscribe"}
    assert any(s.get("since") == first for s in subscribes[1:])


FIRST_FRAME = """
async ([url, token]) => {
  const frames = (window.frames_ = []);
  const ws = new WebSocket(url);
  window.ws = ws;
  ws.onmessage = (e) => {
    const m = JSON.parse(e.data);
    frames.push(m);
    if (m.type === "authenticated") ws.send(JSON.stringify({ type: "subscribe" }));
    if (m.type === "subscribed") ws.send(JSON.stringify({ type: "ping" }));
  };
  ws.onclose = (e) => { window.wsClosed = e.code; };
  await new Promise((resolve) => { ws.onopen = resolve; });
  ws.send(JSON.stringify({ type: "auth", token }));
}
"""


def test_websocket_first_frame_auth_and_refused_ticket(app_page: BrowserPage) -> None:
    p, stack = app_page, app_page.stack
    patient = new_patient()
    ws_url = stack.base_url.replace("http://", "ws://") + "/v1/ws"
    p.js(FIRST_FRAME, [ws_url, mint(patient)])
    p.wait("() => window.frames_.some((m) => m.type === 'pong')")
    event_id = stack.publish(patient, "ap_1")
    p.wait("() => window.frames_.some((m) => m.type === 'event')")
    frames: list[dict[str, Any]] = p.js("() => window.frames_")
    types = [f["type"] for f in frames]
    assert types[:3] == ["authenticated", "subscribed", "pong"]
    assert frames[1]["resume_point"] == "0-0"  # an empty history: its head
    assert frames[3]["event"]["id"] == event_id
    # A bad ticket: the handshake is refused with a 401, which page code sees only as 1006.
    p.js(
        "(url) => { const ws = new WebSocket(url + '?ticket=nope'); ws.onclose = (e) => { window.refused = e.code; }; }",
        ws_url,
    )
    p.wait("() => window.refused !== undefined")
    assert p.js("() => window.refused") == 1006
    # Chromium reports the 401 denial as "HTTP Authentication failed; no valid
    # credentials available" in the network log (and a 1006 to the page).
    p.until(
        lambda: any(
            "ticket=nope" in url and "Authentication failed" in error
            for url, error in p.net.ws_errors
        ),
        "the refused handshake in the network log",
    )
    assert all("ticket=nope" not in url for url, _ in p.net.ws_handshakes())  # no upgrade
