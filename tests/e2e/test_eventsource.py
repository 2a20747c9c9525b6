"""The browser's own EventSource, cross-origin, through nginx: what Chromium does by
itself (incremental delivery, automatic reconnects with Last-Event-ID, the retry-able
200) and what it refuses (a stream without CORS headers)."""

from __future__ import annotations

from tests.e2e.conftest import BrowserPage, mint, new_patient

ME = "/v1/patients/me/events"

# Page-side recorder: every stream the test opens is `window.streams[name]`.
RECORDER = """
(() => {
  window.streams = {};
  window.openStream = (name, url) => {
    const s = { events: [], controls: [], opens: 0, errors: 0, closedSeen: false };
    const es = new EventSource(url);
    s.es = es;
    es.onopen = () => { s.opens += 1; };
    es.onerror = () => { s.errors += 1; if (es.readyState === EventSource.CLOSED) s.closedSeen = true; };
    es.addEventListener("appointment.rescheduled", (e) => s.events.push(e.lastEventId));
    for (const type of ["reconnect", "gap", "closed", "token_expiring"]) {
      es.addEventListener(type, (e) => s.controls.push({ type, data: JSON.parse(e.data) }));
    }
    window.streams[name] = s;
  };
  window.getTicket = async (base, token) => {
    const r = await fetch(`${base}/v1/stream-tickets`, {
      method: "POST", headers: { Authorization: `Bearer ${token}` } });
    if (r.status !== 201) throw new Error(`ticket: ${r.status}`);
    return (await r.json()).ticket;
  };
})()
"""


def open_stream(p: BrowserPage, name: str, token: str, query: str = "") -> None:
    """Ticket by the page's own cross-origin fetch, then `new EventSource(...)`."""
    if not p.js("() => 'streams' in window"):
        p.js(RECORDER)
    p.js(
        """async ([name, base, token, query]) => {
             const ticket = await window.getTicket(base, token);
             window.openStream(name, `${base}/v1/patients/me/events?ticket=${ticket}${query}`);
           }""",
        [name, p.stack.base_url, token, query],
    )


def ids(p: BrowserPage, name: str = "a") -> list[str]:
    got: list[str] = p.js("(name) => window.streams[name].events", name)
    return got


def test_live_events_arrive_one_at_a_time_cross_origin(app_page: BrowserPage) -> None:
    p, stack = app_page, app_page.stack
    patient = new_patient()
    open_stream(p, "a", mint(patient))
    p.wait_subscribed()
    published: list[str] = []
    for n in range(3):
        published.append(stack.publish(patient, f"ap_{n}"))
        # The page has this event before the next one is even published.
        p.wait("(n) => window.streams.a.events.length === n", n + 1)
        assert ids(p) == published
    p.until(lambda: "origin" in p.net.streams()[0].headers, "the request headers sent")
    stream = p.net.streams()[0]
    assert stream.status == 200
    assert stream.headers["origin"] == p.page.evaluate("location.origin")
    assert stream.response_headers["access-control-allow-origin"] == p.page.evaluate(
        "location.origin"
    )
    assert stream.response_headers["content-type"].startswith("text/event-stream")
    assert p.js("() => window.streams.a.opens") == 1


def test_cross_origin_stream_without_cors_fails_negative_control(
    foreign_page: BrowserPage,
) -> None:
    """The page's origin is not in NOTIFY_CORS_ORIGINS: the server answers 200, and
    Chromium refuses the stream for want of Access-Control-Allow-Origin."""
    p, stack = foreign_page, foreign_page.stack
    patient = new_patient()
    ticket = stack.ticket(mint(patient))  # not by the page: its fetch would fail too
    p.js(RECORDER)
    p.js(
        "([base, ticket]) => window.openStream('a', `${base}/v1/patients/me/events?ticket=${ticket}`)",
        [stack.base_url, ticket],
    )
    # Either outcome ends this wait: refused (closed) or, were the origin allowed, opened.
    p.wait("() => window.streams.a.closedSeen || window.streams.a.opens > 0")
    assert p.js("() => window.streams.a.opens") == 0
    assert p.js("() => window.streams.a.closedSeen") is True

    def verdict() -> bool:
        # The DevTools events of one request arrive in no fixed order, and not
        # necessarily before the page's `error` event: wait for the request, its
        # failure with the CORS reason and the status it had on the wire.
        streams = p.net.streams()
        return bool(streams) and None not in (streams[0].cors_error, streams[0].wire_status)

    p.until(verdict, "the CORS verdict and the status on the wire")
    (stream,) = p.net.streams()  # refused for good: EventSource does not retry
    assert stream.wire_status == 200
    assert stream.status is None  # never handed to the page
    assert stream.cors_error == "MissingAllowOriginHeader"
    # The same stream from the allowed origin works: test_live_events_arrive_... above.


def restart_mid_stream(p: BrowserPage, *, prior_event: bool) -> None:
    stack = p.stack
    patient = new_patient()
    open_stream(p, "a", mint(patient))
    p.wait_subscribed()
    before = [stack.publish(patient, "ap_before")] if prior_event else []
    p.wait("(n) => window.streams.a.events.length === n", len(before))
    stack.restart()
    # Published while the browser was away from the old process.
    after = [stack.publish(patient, "ap_after_1"), stack.publish(patient, "ap_after_2")]
    p.wait("(n) => window.streams.a.events.length === n", len(before) + len(after))
    # Nothing missing, nothing twice, in order.
    assert ids(p) == before + after
    state = p.js(
        "() => ({ closed: window.streams.a.closedSeen, ready: window.streams.a.es.readyState,"
        " controls: window.streams.a.controls.map((c) => c.data.reason) })"
    )
    assert state["closed"] is False, "EventSource gave up (a non-200 answer)"
    assert "shutdown" in state["controls"]
    p.until(
        lambda: len(p.net.streams()) >= 2 and "accept" in p.net.streams()[1].headers,
        "the reconnect's request headers",
    )
    p.until(lambda: "origin" in p.net.streams()[1].headers, "the headers actually sent")
    requests = p.net.streams()
    first, reconnects = requests[0], requests[1:]
    assert "last-event-id" not in first.headers
    # What only the network log shows: EventSource's own reconnects, their status and
    # the Last-Event-ID header (the event's id, or the head id the server sent first).
    expected = before[-1] if prior_event else "0-0"
    assert reconnects[0].headers.get("last-event-id") == expected
    assert all(r.status == 200 for r in reconnects if r.status is not None)
    # Same URL (same ticket) every time: no new ticket was needed.
    assert {r.url for r in requests} == {first.url}


def test_restart_mid_stream_resumes_after_the_last_event(app_page: BrowserPage) -> None:
    restart_mid_stream(app_page, prior_event=True)


def test_restart_mid_stream_resumes_from_the_head_without_any_event(
    app_page: BrowserPage,
) -> None:
    """The id-only block (`id: 0-0` on an empty history) is the resume point of a
    client that has received nothing; without it the events above would be lost."""
    restart_mid_stream(app_page, prior_event=False)


def test_capacity_refusal_is_a_retryable_200_and_the_browser_comes_back(
    app_page: BrowserPage,
) -> None:
    p, stack = app_page, app_page.stack
    stack.ensure(max_connections_per_subject=1)
    patient = new_patient()
    token = mint(patient)
    open_stream(p, "a", token)
    p.wait_subscribed()
    # The same patient again: over the per-subject limit. `last_event_id=0-0` so that
    # when it gets in, it replays what it could not receive while refused.
    open_stream(p, "b", token, "&last_event_id=0-0")
    p.wait("() => window.streams.b.controls.some((c) => c.type === 'reconnect')")
    refusal = p.js("() => window.streams.b.controls[0]")
    assert refusal == {"type": "reconnect", "data": {"reason": "over_capacity"}}
    first = stack.publish(patient, "ap_1")
    p.wait("() => window.streams.a.events.length === 1")
    # Room again: the browser's own next retry gets in and replays what it missed.
    p.js("() => window.streams.a.es.close()")
    p.wait("() => window.streams.b.events.length === 1")
    assert ids(p, "b") == [first]
    assert p.js("() => window.streams.b.closedSeen") is False
    b_requests = [r for r in p.net.streams() if r.url != p.net.streams()[0].url]
    assert len(b_requests) >= 2, "the refused stream was not retried by the browser"
    assert all(r.status == 200 for r in b_requests if r.status is not None)
    assert b_requests[0].response_headers["content-type"].startswith("text/event-stream")
    stack.ensure()
