"""`/docs` in Chromium, through the shipped nginx config: Swagger UI renders from
this origin alone under its Content-Security-Policy (a violation would be a console
error), and its Authorize button sends a service token with "Try it out"."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from playwright.sync_api import Browser, ConsoleMessage, Request

from tests.e2e.conftest import WAIT_MS, Stack, new_patient
from tests.support.events import event_dict


def test_swagger_ui_works_offline_and_publishes_with_a_bearer_token(
    browser: Browser, stack: Stack
) -> None:
    stack.ensure()
    origin = urlsplit(stack.base_url).netloc
    context = browser.new_context()
    try:
        page = context.new_page()
        requests: list[Request] = []
        problems: list[str] = []
        page.on("request", lambda r: requests.append(r))
        page.on("console", lambda m: _note(problems, m))
        page.on("pageerror", lambda e: problems.append(f"pageerror: {e}"))
        page.goto(f"{stack.base_url}/docs")

        page.click("button.authorize", timeout=WAIT_MS)
        modal = page.locator(".modal-ux")
        modal.wait_for(timeout=WAIT_MS)
        assert "bearer" in modal.inner_text()
        modal.locator("input").first.fill(stack.publisher)
        modal.locator("button.authorize").first.click()
        modal.locator("button.btn-done").first.click()

        patient = new_patient()
        publish = page.locator("#operations-publish-publish_event_v1_events_post")
        publish.locator(".opblock-summary").click()
        publish.locator("button.try-out__btn").click()
        publish.locator("textarea.body-param__text").fill(json.dumps(event_dict(patient)))
        publish.locator("button.execute").click()
        status = publish.locator(".live-responses-table .response-col_status")
        status.first.wait_for(timeout=WAIT_MS)
        assert status.all_inner_texts()[-1] == "201"

        sent = [r for r in requests if r.url.endswith("/v1/events")]
        assert [r.headers.get("authorization") for r in sent] == [f"Bearer {stack.publisher}"]
        elsewhere = [r.url for r in requests if urlsplit(r.url).netloc != origin]
        assert elsewhere == [], "loaded from another origin"
        assert problems == []
    finally:
        context.close()


def _note(problems: list[str], message: ConsoleMessage) -> None:
    # A CSP violation or a failed load is a console error.
    if message.type in ("error", "warning"):
        problems.append(f"{message.type}: {message.text}")
