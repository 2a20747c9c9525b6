"""`/demo` (development only) in Chromium: the client from /v1/client.js, events
published by its button arriving with their ids, and recovery across a restart."""

from __future__ import annotations

from pathlib import Path

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
