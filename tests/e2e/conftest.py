"""Real Chromium against the real stack: Debian's `chromium` driven by Playwright, the
shipped nginx config in front of `notify serve` processes (real SIGTERM), and a Redis
of our own. Test pages come from another origin (a tiny static server on another
port), so every request the page makes is cross-origin, as from a clinic's web app.

One browser, one nginx, one Redis for this package (package scope, not session:
Playwright's sync API runs its own event loop in the main thread while it is
started, and pytest-asyncio cannot run the later async tests beside it). The service is a
`ServiceProcess` on one of two ports; nginx's upstream lists both (with
`max_fails=0`, so a refused port is retried on the other, never taken out). A
"restart" starts the successor on the other port, then SIGTERMs the current one:
the browser's own reconnects land on whichever answers, as behind a rolling deploy.
"""

from __future__ import annotations

import contextlib
import http.server
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, CDPSession, Page, Playwright, sync_playwright

from service.config import Settings
from service.services.principal import Role
from tests.deploy.conftest import Nginx
from tests.support.app_server import ServiceProcess
from tests.support.events import event
from tests.support.redis_server import EXACT_TRIM, RedisServer, free_port
from tests.support.tokens import Tokens

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Generous: two cores shared with other test runs.
WAIT_MS = 30_000
# Short, so EventSource's own reconnects happen within a test (jittered 0.5-1.5x).
SSE_RETRY_MS = 600
# Small enough for a gap test; the restart tests publish fewer events than this.
HISTORY_MAXLEN = 5

PAGE_HTML = b"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>clinic app (e2e)</title></head>
<body><h1>A clinic's web app on its own origin</h1></body></html>
"""


class StaticSite:
    """One blank page on its own origin (http://127.0.0.1:<port>)."""

    def __init__(self) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(PAGE_HTML)))
                self.end_headers()
                self.wfile.write(PAGE_HTML)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> StaticSite:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def mint(
    sub: str, *, role: Role = Role.PATIENT, scopes: tuple[str, ...] = (), ttl_s: int = 600
) -> str:
    """A token for the stack (the suite's one token minter, shorter-lived)."""
    return Tokens().make(sub, role=role, scopes=scopes, ttl_s=ttl_s)


def new_patient() -> str:
    return f"pt_e2e_{uuid.uuid4().hex[:10]}"


class Stack:
    """nginx → `notify serve` (one of two ports) → Redis; pages on `allowed` origin."""

    def __init__(self, redis: RedisServer, allowed: str, workdir: Path) -> None:
        self.redis = redis
        self.allowed = allowed
        self.workdir = workdir
        self.ports = (free_port(), free_port())
        self.key_prefix = f"e2e{uuid.uuid4().hex[:8]}:"
        self.overrides: dict[str, Any] = {}
        self.current = self._spawn(self.ports[0], {})
        self.nginx = Nginx(self.ports[0])
        upstream = self.nginx.dir / "notify-upstream.conf"
        text = upstream.read_text()
        line = f"server 127.0.0.1:{self.ports[0]};"
        assert line in text, text
        upstream.write_text(
            text.replace(
                line,
                f"server 127.0.0.1:{self.ports[0]} max_fails=0;\n"
                f"    server 127.0.0.1:{self.ports[1]} max_fails=0;",
            )
        )
        self.nginx.start()
        self.base_url = self.nginx.base_url
        self.publisher = mint("svc_e2e", role=Role.SERVICE, scopes=("events:publish",))
        self.admin = mint("adm_e2e", role=Role.ADMIN, scopes=("revocations:write",))
        self.restarts = 0

    def settings(self, overrides: dict[str, Any]) -> Settings:
        values: dict[str, Any] = {
            "env": "test",
            "redis_url": self.redis.url,
            "key_prefix": self.key_prefix,
            "cors_origins": [self.allowed],
            "sse_retry_ms": SSE_RETRY_MS,
            "history_maxlen": HISTORY_MAXLEN,
            "heartbeat_s": 1.0,
            "shutdown_grace_s": 2.0,
            "log_format": "json",
            "proxy_headers": True,
            "forwarded_allow_ips": "127.0.0.1",
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)

    def _spawn(self, port: int, overrides: dict[str, Any]) -> ServiceProcess:
        log = self.workdir / f"notify-{port}-{uuid.uuid4().hex[:6]}.log"
        proc = ServiceProcess(self.settings(overrides), log_path=str(log), port=port)
        proc.start(timeout_s=60)
        return proc

    def stop_service(self) -> None:
        """SIGTERM the running process and wait for it to exit: nothing answers."""
        self.current.terminate()
        self.current.wait(timeout_s=60)

    def start_service(self, **overrides: Any) -> None:
        """A new process on the other port (after `stop_service`)."""
        port = self.ports[1] if self.current.port == self.ports[0] else self.ports[0]
        self.current = self._spawn(port, overrides)
        self.overrides = overrides

    def restart(self, **overrides: Any) -> None:
        """Start a successor on the other port, then SIGTERM the current process and
        wait for it to exit (its streams get their reconnect hint while it drains)."""
        old = self.current
        port = self.ports[1] if old.port == self.ports[0] else self.ports[0]
        self.current = self._spawn(port, overrides)
        self.overrides = overrides
        old.terminate()
        old.wait(timeout_s=60)
        self.restarts += 1

    def ensure(self, **overrides: Any) -> None:
        """The service runs with exactly these overrides (restarted if not)."""
        proc = self.current.proc
        if proc is None or proc.poll() is not None:
            # A test stopped it (and failed before starting its successor).
            self.start_service(**overrides)
        elif overrides != self.overrides:
            self.restart(**overrides)

    def publish(self, patient_id: str, appointment_id: str = "ap_1") -> str:
        """Publish through the API of the running process; returns the event id."""
        response = httpx.post(
            f"{self.current.base_url}/v1/events",
            json=event(patient_id, appointment_id),
            headers={"Authorization": f"Bearer {self.publisher}"},
            timeout=10,
        )
        assert response.status_code == 201, response.text
        event_id: str = response.json()["id"]
        return event_id

    def revoke_subject(self, sub: str) -> None:
        until = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        response = httpx.post(
            f"{self.current.base_url}/v1/revocations",
            json={"sub": sub, "until": until},
            headers={"Authorization": f"Bearer {self.admin}"},
            timeout=10,
        )
        assert response.status_code == 201, response.text

    def ticket(self, token: str) -> str:
        response = httpx.post(
            f"{self.base_url}/v1/stream-tickets",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert response.status_code == 201, response.text
        ticket: str = response.json()["ticket"]
        return ticket

    def stop(self) -> None:
        self.current.stop()
        self.nginx.stop()


@dataclass
class Request:
    """One request as the DevTools Protocol saw it."""

    url: str
    method: str
    headers: dict[str, str] = field(default_factory=dict)
    status: int | None = None
    response_headers: dict[str, str] = field(default_factory=dict)
    # Body bytes received so far: an SSE stream's first bytes (`retry:` and the id-only
    # block) are sent only once the server has subscribed its channel.
    received: int = 0
    failed: str | None = None
    # Chromium's reason for refusing a cross-origin response (e.g. MissingAllowOriginHeader).
    cors_error: str | None = None
    # The status on the wire, also for responses the page was not allowed to see.
    wire_status: int | None = None


class NetworkLog:
    """Network.* events of one page: what page JavaScript cannot see (the status of
    EventSource's own reconnects, the Last-Event-ID header it sent, WebSocket frames)."""

    def __init__(self, cdp: CDPSession) -> None:
        self.requests: dict[str, Request] = {}
        self.order: list[str] = []
        self._pending_extra: dict[str, dict[str, str]] = {}
        # ExtraInfo events come from Chromium's network service, the others from
        # the browser process: either may be first, so what comes before its
        # request is kept for it.
        self._pending_status: dict[str, int] = {}
        self.ws_sent: list[str] = []
        self._ws_urls: dict[str, str] = {}
        self._ws_status: dict[str, int] = {}
        self.ws_errors: list[tuple[str, str]] = []
        cdp.on("Network.requestWillBeSent", self._sent)
        cdp.on("Network.requestWillBeSentExtraInfo", self._extra)
        cdp.on("Network.responseReceived", self._response)
        cdp.on("Network.loadingFailed", self._failed)
        cdp.on("Network.dataReceived", self._data)
        cdp.on("Network.responseReceivedExtraInfo", self._response_extra)
        cdp.on("Network.webSocketFrameSent", self._ws_frame)
        cdp.on("Network.webSocketCreated", self._ws_created)
        cdp.on("Network.webSocketHandshakeResponseReceived", self._ws_handshake)
        cdp.on("Network.webSocketFrameError", self._ws_error)
        cdp.send("Network.enable")

    def _sent(self, params: dict[str, Any]) -> None:
        rid = params["requestId"]
        req = params["request"]
        if rid not in self.requests:
            self.order.append(rid)
        self.requests[rid] = Request(
            url=req["url"],
            method=req["method"],
            headers={k.lower(): v for k, v in req.get("headers", {}).items()},
        )
        self.requests[rid].headers.update(self._pending_extra.pop(rid, {}))
        if rid in self._pending_status:
            self.requests[rid].wire_status = self._pending_status.pop(rid)

    def _extra(self, params: dict[str, Any]) -> None:
        # The headers actually sent (the network stack adds some: Origin,
        # Last-Event-ID). This event may come before or after requestWillBeSent.
        headers = {k.lower(): v for k, v in params.get("headers", {}).items()}
        req = self.requests.get(params["requestId"])
        if req is not None:
            req.headers.update(headers)
        else:
            self._pending_extra.setdefault(params["requestId"], {}).update(headers)

    def _response(self, params: dict[str, Any]) -> None:
        req = self.requests.get(params["requestId"])
        if req is not None:
            req.status = params["response"]["status"]
            headers = params["response"].get("headers", {})
            req.response_headers = {k.lower(): v for k, v in headers.items()}

    def _data(self, params: dict[str, Any]) -> None:
        req = self.requests.get(params["requestId"])
        if req is not None:
            req.received += params.get("dataLength", 0)

    def _failed(self, params: dict[str, Any]) -> None:
        req = self.requests.get(params["requestId"])
        if req is not None:
            req.failed = params.get("errorText") or "failed"
            req.cors_error = (params.get("corsErrorStatus") or {}).get("corsError")

    def _response_extra(self, params: dict[str, Any]) -> None:
        # May come before requestWillBeSent, and before or after responseReceived
        # or loadingFailed.
        status = params.get("statusCode")
        req = self.requests.get(params["requestId"])
        if req is not None:
            req.wire_status = status
        elif status is not None:
            self._pending_status[params["requestId"]] = status

    def _ws_frame(self, params: dict[str, Any]) -> None:
        self.ws_sent.append(params["response"]["payloadData"])

    def _ws_created(self, params: dict[str, Any]) -> None:
        self._ws_urls[params["requestId"]] = params["url"]

    def _ws_handshake(self, params: dict[str, Any]) -> None:
        self._ws_status[params["requestId"]] = params["response"]["status"]

    def _ws_error(self, params: dict[str, Any]) -> None:
        rid = params["requestId"]
        self.ws_errors.append((self._ws_urls.get(rid, ""), params.get("errorMessage", "")))

    def ws_handshakes(self) -> list[tuple[str, int]]:
        """(url, HTTP status) of each WebSocket handshake answered so far."""
        return [(self._ws_urls.get(rid, ""), status) for rid, status in self._ws_status.items()]

    def streams(self, path: str = "/v1/patients/me/events") -> list[Request]:
        """Requests to an SSE route, in the order the page made them."""
        return [
            self.requests[rid]
            for rid in self.order
            if path in self.requests[rid].url and self.requests[rid].method == "GET"
        ]


@dataclass
class BrowserPage:
    page: Page
    net: NetworkLog
    stack: Stack

    def js(self, script: str, arg: Any = None) -> Any:
        return self.page.evaluate(script, arg)

    def wait(self, predicate: str, arg: Any = None, timeout_ms: int = WAIT_MS) -> None:
        self.page.wait_for_function(predicate, arg=arg, timeout=timeout_ms)

    def until(self, predicate: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
        """Poll a Python-side condition (e.g. on the network log) with a deadline;
        Playwright delivers DevTools events while the page waits."""
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout_s} s waiting for {what}; "
                    f"requests: {list(self.net.requests.values())[-6:]}, "
                    f"websockets: {self.net.ws_handshakes()} {self.net.ws_errors}"
                )
            self.page.wait_for_timeout(50)

    def wait_subscribed(self, count: int = 1, path: str = "/v1/patients/me/events") -> None:
        """The `count`-th stream request got its first bytes (the server subscribed)."""
        self.until(
            lambda: (
                len(self.net.streams(path)) >= count
                and self.net.streams(path)[count - 1].received > 0
            ),
            f"stream request {count} to be subscribed",
        )

    def load_client(self) -> None:
        """Import the service's own /v1/client.js (a cross-origin module script)."""
        self.js(
            "async (url) => { window.notify = await import(url); }",
            f"{self.stack.base_url}/v1/client.js",
        )


@pytest.fixture(scope="package")
def playwright_driver() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="package")
def browser(playwright_driver: Playwright) -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the e2e tests need Debian's chromium "
            "(scripts/ensure-system-packages installs it; never `playwright install`)",
            pytrace=False,
        )
    browser = playwright_driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield browser
    browser.close()


@pytest.fixture(scope="package")
def allowed_site() -> Iterator[StaticSite]:
    site = StaticSite().start()
    yield site
    site.stop()


@pytest.fixture(scope="package")
def foreign_site() -> Iterator[StaticSite]:
    """An origin that is NOT in NOTIFY_CORS_ORIGINS (the negative control)."""
    site = StaticSite().start()
    yield site
    site.stop()


@pytest.fixture(scope="package")
def e2e_redis() -> Iterator[RedisServer]:
    server = RedisServer(extra_args=EXACT_TRIM)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="package")
def stack(
    e2e_redis: RedisServer, allowed_site: StaticSite, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    stack = Stack(e2e_redis, allowed_site.origin, tmp_path_factory.mktemp("e2e-stack"))
    try:
        yield stack
    finally:
        stack.stop()


def open_page(browser: Browser, stack: Stack, url: str) -> Iterator[BrowserPage]:
    context = browser.new_context()
    try:
        page = context.new_page()
        net = NetworkLog(context.new_cdp_session(page))
        page.goto(url)
        yield BrowserPage(page=page, net=net, stack=stack)
    finally:
        with contextlib.suppress(Exception):
            context.close()


@pytest.fixture
def app_page(browser: Browser, stack: Stack, allowed_site: StaticSite) -> Iterator[BrowserPage]:
    """A page on the allowed origin, with the default service settings."""
    stack.ensure()
    yield from open_page(browser, stack, f"{allowed_site.origin}/")


@pytest.fixture
def foreign_page(browser: Browser, stack: Stack, foreign_site: StaticSite) -> Iterator[BrowserPage]:
    stack.ensure()
    yield from open_page(browser, stack, f"{foreign_site.origin}/")
