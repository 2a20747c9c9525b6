"""`/demo` (development only) in Chromium: the client from /v1/client.js, events
published by its button arriving with their ids, recovery across a restart, the
resume point before any event, and which tab leads."""

from __future__ import annotations

import contextlib
from pathlib import Path

import httpx
from playwright.sync_api import Browser

from tests.e2e.conftest import WAIT_MS, Stack, open_page


def test_demo_page_shows_live_events_and_survives_a_restart(
    browser: Browser, stack: Stack, tmp_path: Path
) -> None:
    stack.ensure()
    for p in open_page(browser, stack, f"{stack.base_url}/demo"):
        page = p.page
        page.wait_for_function("() => window.demo?.client?.state === 'open'", timeout=WAIT_MS)
        p.wait_subscribed()
        page.click("#publish")
        page.wait_for_function("() => window.demo.events.length === 1", timeout=WAIT_MS)
        page.click("#publish")
        page.wait_for_function("() => window.demo.events.length === 2", timeout=WAIT_MS)
        stack.restart()
        # The client comes back by itself; the button publishes through the new process.
        page.wait_for_function(
            "() => window.demo.states.includes('reconnecting') && window.demo.client.state === 'open'",
            timeout=WAIT_MS,
        )
        page.click("#publish")
        page.wait_for_function("() => window.demo.events.length === 3", timeout=WAIT_MS)
        ids = page.evaluate("() => window.demo.events.map((e) => e.id)")
        assert len(set(ids)) == 3
        # What a person sees: three rows with those ids, the state pill, the counter.
        rows = page.locator("#events tr").all_inner_texts()
        assert len(rows) == 3
        assert all(any(i in row for row in rows) for i in ids)
        assert page.inner_text("#state") == "open"
        assert page.inner_text("#count") == "3"
        assert page.inner_text("#last-id") == ids[-1]
        shot = tmp_path / "demo.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        print(f"demo screenshot: {shot}")


def test_demo_shows_the_resume_point_and_which_tab_leads(browser: Browser, stack: Stack) -> None:
    stack.ensure()
    head = httpx.post(f"{stack.base_url}/demo/events", timeout=10).json()["id"]
    context = browser.new_context()
    try:
        first, second = context.new_page(), context.new_page()
        for page in (first, second):
            page.goto(f"{stack.base_url}/demo")
            page.wait_for_function("() => window.demo?.client?.state === 'open'", timeout=WAIT_MS)
        # A patient with history: the resume point is its head before any event arrives.
        for page in (first, second):
            page.wait_for_function(
                "(head) => document.getElementById('last-id').textContent >= head",
                arg=head,
                timeout=WAIT_MS,
            )
            assert page.inner_text("#last-id") != "none"
        roles = sorted(page.get_attribute("#role", "data-role") or "" for page in (first, second))
        assert roles == ["follower", "leader"]
        assert "leads" in (first.inner_text("#role") + second.inner_text("#role"))
        # The follower shows what the leader's stream delivers.
        first.click("#publish")
        for page in (first, second):
            page.wait_for_function("() => window.demo.events.length === 1", timeout=WAIT_MS)
        ids = [page.evaluate("() => window.demo.events[0].id") for page in (first, second)]
        assert ids[0] == ids[1]
        assert first.inner_text("#last-id") == second.inner_text("#last-id") == ids[0]
    finally:
        with contextlib.suppress(Exception):
            context.close()
