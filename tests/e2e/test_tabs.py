"""Tabs share one connection (Chromium, through the shipped nginx, page on another
origin): one leader per browser and patient holds the stream (a Web Lock), the others
get everything over a BroadcastChannel, once and in order; a hand-over (closed or
crashed leader) loses and repeats nothing; a follower's WebSocket command is answered
in that tab; patients never share. Negative control: without sharing, HTTP/1.1's six
connections per host leave a seventh tab hanging."""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext

from tests.e2e.conftest import (
    HISTORY_MAXLEN,
    BrowserPage,
    NetworkLog,
    Stack,
    StaticSite,
    mint,
    new_patient,
)
from tests.support.app_server import ServiceProcess
from tests.support.events import event

# Every callback of one tab, in window.seen; `share` and `transport` per tab.
START = """
({ base, token, transport, share }) => {
  const seen = (window.seen = {
    events: [], states: [], gaps: [], closed: [], errors: [], roles: [], leadAt: null, resumes: [],
  });
  const client = new window.notify.NotifyClient({
    baseUrl: base,
    transport,
    share,
    initialBackoffMs: 200,
    maxBackoffMs: 2000,
    getToken: () => token,
    onEvent: (event) => seen.events.push(event.id),
    onGap: (gap) => seen.gaps.push(gap),
    onStateChange: (state) => seen.states.push(state),
    onResumePoint: (id) => seen.resumes.push(id),
    onRoleChange: (role) => {
      seen.roles.push(role);
      if (role === "leader") seen.leadAt = Date.now();
    },
    onClosed: (reason) => seen.closed.push(reason),
    onError: (error) => seen.errors.push(String(error.message)),
  });
  window.client = client;
  client.start();
}
"""


@contextlib.contextmanager
def browser_context(browser: Browser) -> Iterator[BrowserContext]:
    context = browser.new_context()
    try:
        yield context
    finally:
        with contextlib.suppress(Exception):
            context.close()


def open_tabs(
    context: BrowserContext,
    stack: Stack,
    site: StaticSite,
    token: str,
    count: int,
    *,
    transport: str = "sse",
    share: bool = True,
) -> list[BrowserPage]:
    tabs = []
    for _ in range(count):
        page = context.new_page()
        net = NetworkLog(context.new_cdp_session(page))
        page.goto(f"{site.origin}/")
        tab = BrowserPage(page=page, net=net, stack=stack)
        tab.load_client()
        tab.js(
            START, {"base": stack.base_url, "token": token, "transport": transport, "share": share}
        )
        tabs.append(tab)
    return tabs


def role(tab: BrowserPage) -> str | None:
    result: str | None = tab.js("() => window.client.role")
    return result


def seen(tab: BrowserPage) -> dict[str, Any]:
    result: dict[str, Any] = tab.js("() => window.seen")
    return result


def settled(tabs: list[BrowserPage]) -> BrowserPage:
    """Wait until one tab leads, the others follow, and every tab is open; the leader."""
    for tab in tabs:
        tab.wait("() => window.client.role !== null && window.client.state === 'open'")
    roles = [role(tab) for tab in tabs]
    assert roles.count("leader") == 1, roles
    assert roles.count("follower") == len(tabs) - 1, roles
    return tabs[roles.index("leader")]


def open_streams(stack: Stack, transport: str = "sse") -> float:
    """The service's own gauge, as Prometheus scrapes it."""
    text = httpx.get(f"{stack.current.base_url}/metrics", timeout=10).text
    match = re.search(rf'^notify_open_streams{{transport="{transport}"}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def wait_streams(tab: BrowserPage, stack: Stack, count: int, transport: str = "sse") -> None:
    tab.until(lambda: open_streams(stack, transport) == count, f"{count} open {transport} streams")


def wait_events(tabs: list[BrowserPage], ids: list[str]) -> None:
    for tab in tabs:
        tab.wait("(n) => window.seen.events.length >= n", len(ids))


@pytest.fixture
def tabs_stack(stack: Stack) -> Stack:
    stack.ensure()
    return stack


def test_eight_tabs_hold_one_stream_and_all_get_every_event_once(
    browser: Browser, tabs_stack: Stack, allowed_site: StaticSite
) -> None:
    stack = tabs_stack
    patient = new_patient()
    head = stack.publish(patient, "ap_0")
    with browser_context(browser) as context:
        tabs = open_tabs(context, stack, allowed_site, mint(patient), 8)
        leader = settled(tabs)
        wait_streams(leader, stack, 1)
        # Only the leader asked for a ticket and a stream.
        assert [len(t.net.streams()) for t in tabs].count(0) == 7
        assert len(leader.net.streams()) == 1
        published = [stack.publish(patient, f"ap_{n}") for n in range(1, 6)]
        wait_events(tabs, published)
        for tab in tabs:
            got = seen(tab)
            assert got["events"] == published, "each event once, in order, in every tab"
            assert tab.js("() => window.client.lastEventId") == published[-1]
            # The server's resume point reached every tab before any event.
            assert got["resumes"][:1] == [head]
            assert got["errors"] == []
        assert open_streams(stack) == 1


@pytest.mark.parametrize("ending", ["closed", "crashed"])
def test_leader_gone_while_events_flow_loses_and_repeats_nothing(
    browser: Browser, tabs_stack: Stack, allowed_site: StaticSite, ending: str
) -> None:
    stack = tabs_stack
    patient = new_patient()
    published: list[str] = []
    stop = threading.Event()

    def publish_every_50_ms() -> None:
        n = 0
        while not stop.wait(0.05):
            n += 1
            published.append(stack.publish(patient, f"ap_{n}"))

    with browser_context(browser) as context:
        tabs = open_tabs(context, stack, allowed_site, mint(patient), 4)
        leader = settled(tabs)
        others = [t for t in tabs if t is not leader]
        publisher = threading.Thread(target=publish_every_50_ms, daemon=True)
        publisher.start()
        try:
            wait_events(tabs, ["x"] * 5)
            gone_at_ms = time.time() * 1000
            if ending == "closed":
                leader.page.close()
            else:
                # The renderer process dies (no unload, no goodbye): the browser frees
                # its Web Lock all the same.
                crashed: list[bool] = []
                leader.page.on("crash", lambda _: crashed.append(True))
                with contextlib.suppress(Exception):
                    leader.page.goto("chrome://crash", timeout=5000)
                others[0].until(lambda: bool(crashed), "the leader's renderer to crash")
            others[0].until(lambda: [role(t) for t in others].count("leader") == 1, "a new leader")
            (new_leader,) = [t for t in others if role(t) == "leader"]
            lead_at_ms = new_leader.js("() => window.seen.leadAt")
            print(f"{ending} leader: a new one after {lead_at_ms - gone_at_ms:.0f} ms")
            assert lead_at_ms - gone_at_ms < 2000, "the lock passes on at once"
            # Events keep flowing through the new leader's stream for a while.
            count = len(published)
            wait_events(others, ["x"] * (count + 10))
        finally:
            stop.set()
            publisher.join(timeout=30)
        wait_events(others, published)
        for tab in others:
            got = seen(tab)
            assert got["events"] == published, f"{ending}: a tab missed or repeated an event"
            assert got["gaps"] == []
        assert [len(t.net.streams()) for t in others].count(0) == 2
        wait_streams(new_leader, stack, 1)


def test_command_from_a_follower_is_answered_in_that_tab(
    browser: Browser, tabs_stack: Stack, allowed_site: StaticSite
) -> None:
    stack = tabs_stack
    patient = new_patient()
    with browser_context(browser) as context:
        tabs = open_tabs(context, stack, allowed_site, mint(patient), 2, transport="websocket")
        leader = settled(tabs)
        (follower,) = [t for t in tabs if t is not leader]
        published = stack.publish(patient, "ap_1")
        wait_events(tabs, [published])
        reply = follower.js(
            "async () => { window.reply = await window.client.command('confirm', 'ap_1');"
            " return window.reply; }"
        )
        assert reply["type"] == "command_accepted"
        assert reply["command_id"]
        assert leader.js("() => window.reply") is None
        # The command went out on the leader's socket: the follower has none.
        assert follower.net.ws_handshakes() == []
        assert any('"command"' in frame for frame in leader.net.ws_sent)
        # A refused command's error comes back to the asking tab, too.
        refused = follower.js(
            "() => window.client.command('confirm', 'ap_unknown')"
            ".then(() => 'accepted', (error) => error.message)"
        )
        assert refused != "accepted"
        assert seen(follower)["errors"] == []


def test_patients_never_share(
    browser: Browser, tabs_stack: Stack, allowed_site: StaticSite
) -> None:
    """One browser context with two patients (a logout and another login), and a
    second context: a leader per patient and context, each tab its own events only."""
    stack = tabs_stack
    first, second = new_patient(), new_patient()
    with browser_context(browser) as one, browser_context(browser) as other:
        mine = open_tabs(one, stack, allowed_site, mint(first), 2)
        theirs = open_tabs(one, stack, allowed_site, mint(second), 2)
        elsewhere = open_tabs(other, stack, allowed_site, mint(second), 1)
        settled(mine)
        settled(theirs)
        assert role(elsewhere[0]) in {None, "leader"}
        elsewhere[0].wait("() => window.client.state === 'open'")
        assert role(elsewhere[0]) == "leader"
        for_first = stack.publish(first, "ap_1")
        for_second = stack.publish(second, "ap_2")
        wait_events([*mine, *theirs, *elsewhere], [for_first])
        for tab in mine:
            assert seen(tab)["events"] == [for_first]
        for tab in [*theirs, *elsewhere]:
            assert seen(tab)["events"] == [for_second]


def test_negative_control_without_sharing_the_seventh_tab_hangs(
    browser: Browser, tabs_stack: Stack, allowed_site: StaticSite
) -> None:
    """`share: false` over HTTP/1.1 (nginx without TLS): six streams take every
    connection Chromium allows to the host, so the seventh tab's ticket request waits
    for one of them to end."""
    stack = tabs_stack
    patient = new_patient()
    with browser_context(browser) as context:
        six = open_tabs(context, stack, allowed_site, mint(patient), 6, share=False)
        for tab in six:
            tab.wait("() => window.client.state === 'open'")
        assert {role(t) for t in six} == {"solo"}
        (seventh,) = open_tabs(context, stack, allowed_site, mint(patient), 1, share=False)
        published = stack.publish(patient, "ap_1")
        wait_events(six, [published])
        # While all six tabs received the event, the seventh has not even got a ticket.
        tickets = [r for r in seventh.net.requests.values() if "/v1/stream-tickets" in r.url]
        assert tickets, "the seventh tab asked for a ticket"
        assert all(r.status is None for r in tickets)
        assert seventh.js("() => window.client.state") == "connecting"
        assert seen(seventh)["events"] == []
        wait_streams(seventh, stack, 6)
        # One tab goes: its connection is free, and the seventh opens at once.
        six[0].page.close()
        seventh.wait("() => window.client.state === 'open'")


def test_gap_and_resume_after_an_outage_reach_every_tab_once(
    browser: Browser, tabs_stack: Stack, allowed_site: StaticSite, tmp_path: Path
) -> None:
    """No service behind nginx for a while; meanwhile more events than history keeps
    are published (through a process nginx does not know). The leader resumes from
    its last id: the gap and what history still holds reach every tab, once."""
    stack = tabs_stack
    patient = new_patient()
    with browser_context(browser) as context:
        tabs = open_tabs(context, stack, allowed_site, mint(patient), 3)
        leader = settled(tabs)
        first = stack.publish(patient, "ap_0")
        wait_events(tabs, [first])
        stack.stop_service()
        leader.wait("() => window.client.state === 'reconnecting'")
        aside = ServiceProcess(stack.settings({}), log_path=str(tmp_path / "aside.log"))
        aside.start(timeout_s=60)
        try:
            missed = [
                httpx.post(
                    f"{aside.base_url}/v1/events",
                    json=event(patient, f"ap_{n}"),
                    headers={"Authorization": f"Bearer {stack.publisher}"},
                    timeout=10,
                ).json()["id"]
                for n in range(1, HISTORY_MAXLEN + 3)
            ]
        finally:
            aside.stop()
        stack.start_service()
        kept = missed[-HISTORY_MAXLEN:]
        wait_events(tabs, [first, *kept])
        for tab in tabs:
            got = seen(tab)
            assert got["events"] == [first, *kept]
            assert got["gaps"] == [{"oldest_id": kept[0]}]
            assert got["states"][-2:] == ["reconnecting", "open"]
        # Only the leader reconnected.
        assert [len(t.net.streams()) > 0 for t in tabs].count(True) == 1


def test_revocation_closes_every_tab_for_good(
    browser: Browser, tabs_stack: Stack, allowed_site: StaticSite
) -> None:
    stack = tabs_stack
    patient = new_patient()
    with browser_context(browser) as context:
        tabs = open_tabs(context, stack, allowed_site, mint(patient), 3)
        leader = settled(tabs)
        stack.revoke_subject(patient)
        for tab in tabs:
            tab.wait("() => window.seen.closed.length === 1")
            assert seen(tab)["closed"] == ["revoked"]
            assert tab.js("() => window.client.state") == "closed"
        # Nobody took over with the revoked credentials: one stream, ever.
        wait_streams(leader, stack, 0)
        assert [len(t.net.streams()) for t in tabs] == [1 if t is leader else 0 for t in tabs]
        assert all(role(t) != "leader" or t is leader for t in tabs)


# Drops the leader's `closed` message in a follower (kept in window.dropped): as if it
# arrived after the lock's grant, which travels a separate way.
DROP_CLOSED = """
() => {
  const client = window.client;
  const onTab = client._onTab.bind(client);
  window.dropped = [];
  client._onTab = (m) => (m?.kind === "closed" ? window.dropped.push(m) : onTab(m));
}
"""

# This origin's Web Locks, held and waiting, in every tab and client.
LOCKS = """
async () => {
  const { held, pending } = await navigator.locks.query();
  return [...held, ...pending].map((lock) => `${lock.mode} ${lock.name}`);
}
"""


def test_revocation_closes_a_tab_granted_the_lock_before_the_message(
    browser: Browser, tabs_stack: Stack, allowed_site: StaticSite
) -> None:
    """The revoked leader's `closed` message and the hand-over of its Web Lock go
    separate ways: a waiting tab can hold the lock before the message arrives. Here
    the followers never handle the message, so only the lock manager can tell them:
    each is granted the lock in turn and closes with the leader's reason, none takes
    over, and no lock is left behind for the patient's next login."""
    stack = tabs_stack
    patient = new_patient()
    with browser_context(browser) as context:
        tabs = open_tabs(context, stack, allowed_site, mint(patient), 3)
        leader = settled(tabs)
        followers = [t for t in tabs if t is not leader]
        for tab in followers:
            tab.js(DROP_CLOSED)
        stack.revoke_subject(patient)
        for tab in tabs:
            tab.wait("() => window.seen.closed.length === 1")
            assert seen(tab)["closed"] == ["revoked"]
            assert tab.js("() => window.client.state") == "closed"
        for tab in followers:
            # The message did come (and was dropped): the close came from the lock.
            tab.wait("() => window.dropped.length === 1")
            assert tab.js("() => window.dropped") == [{"kind": "closed", "reason": "revoked"}]
            assert seen(tab)["roles"] == ["follower"]
            assert seen(tab)["errors"] == []
        leader.until(lambda: leader.js(LOCKS) == [], "no lock held or waiting")
        wait_streams(leader, stack, 0)
        assert [len(t.net.streams()) for t in tabs] == [1 if t is leader else 0 for t in tabs]
