"""A stream closed at every point of its life, from either side, on both transports,
leaves exactly one audit pair, nothing in the hub and no error in the log.

Each case runs its own app (uvicorn in this loop, real Redis) with the settings its
point needs, and a client on a bare socket (`tests/support/socket_peers.py`) that
reads only when told to, so it can stop at any byte. After the close, while the
app still serves, nothing of the stream may be left: no queue or channel in the
hub, no admission counted, no clock slot, no connection in uvicorn, no subscriber
on the patient's channel in Redis, the open-streams gauge back where it was. Then
the app stops, and its log, from the first stream to the lifespan's end, holds
exactly one `stream_opened` and one `stream_closed` for the subscription (none at
all when the close came before the stream opened), the `close_reason` the case
expects, one `ws_closed` per admitted WebSocket, and no error, exception or
warning.

Points and sides (the client closes / the server closes):

- **before headers**: the client sends half a request (or a WebSocket upgrade) and
  closes: no stream opens. Or it sends all of it and closes before the answer
  (SSE) / right after the `101`, with its `subscribe` in flight (WebSocket): the
  request is complete, so the server serves it, opens the stream and ends it as
  `client_gone` once it learns of the departure (one pair). The server: the
  header deadline (`NOTIFY_HEADER_TIMEOUT_S`) answers a request that never
  finishes its headers with a `408` and closes (no stream; on a WebSocket, no
  connection admitted either).
- **mid-frame**: the client has read part of a large event (its receive buffer
  small, so most of the frame still waits on the server's side) and closes. The
  server: the subject is revoked while the client is in the middle of that frame;
  the client reads on and gets the whole frame, then the closing frame.
- **paused by backpressure**: the client stops reading until the server's send is
  paused (flow control: a send in progress that cannot complete), then closes. The
  server: more events than the queue holds arrive meanwhile, the queue closes as
  too slow, and the client, reading again, gets the reconnect hint; or the client
  never reads again and the send timeout (`NOTIFY_SEND_TIMEOUT_S`) aborts the send.
- **during a heartbeat**: SSE keep-alive comments every 0.2 s; WebSocket protocol
  pings every 0.2 s (the WebSocket's keep-alive: it has no application heartbeat).
  The client closes after a few. The server: on a WebSocket, the client stops
  answering pings and uvicorn's ping timeout ends the connection; an SSE heartbeat
  is one-way and never ends a stream by itself (a dead peer is found by the send
  timeout, the backpressure point), so its server side is a revocation arriving
  while heartbeats flow.
- **token-expiry warning**: a 3 s token; the client closes as `token_expiring`
  arrives. The server: the expiry itself, right after the warning.
- **shutdown**: the drain (`AppState.begin_drain`, what SIGTERM starts) with the
  stream open. The client closes after the drain began, before its reconnect hint
  (the hint is made to come at the end of the jitter window); the server's side is
  the hint and the close, after which the app stops with the lifespan's shutdown;
  or, with a client that stopped reading, the abort of its stuck send at the
  drain's end.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar

import httpx
import pytest

from service.config import Settings
from service.fanout.clock import Watched
from service.fanout.closing import CloseReason
from service.fanout.queue import DeliveryQueue
from tests.conftest import SettingsFactory, Tokens, bearer
from tests.support.app_server import RunningApp, run_app
from tests.support.logs import CapturedLog
from tests.support.metrics import metric
from tests.support.publishing import publish_one
from tests.support.raw_redis import async_client, is_cluster
from tests.support.socket_peers import Peer, SsePeer, WsPeer
from tests.support.waiting import eventually

Transport = Literal["sse", "ws"]
PeerT = TypeVar("PeerT", bound=Peer)
# A receive buffer the server fills with a few kilobytes (the kernel doubles it).
SMALL_RCVBUF = 4096
# Under the 64 KiB an event may have: several of them fill every buffer on the way.
BIG = "x" * 60_000
# Enough big events to fill a stalled client's path many times over.
MAX_TO_PAUSE = 400


@dataclass
class Ctx:
    """What a case's steps work with."""

    app: RunningApp
    http: httpx.AsyncClient
    tokens: Tokens
    transport: Transport
    subject: str
    token: str
    monkeypatch: pytest.MonkeyPatch
    # Every client socket of the case, closed at its end whatever happened.
    peers: list[Peer] = field(default_factory=list)

    def track(self, peer: PeerT) -> PeerT:
        self.peers.append(peer)
        return peer

    async def open(self, *, rcvbuf: int | None = None) -> SsePeer | WsPeer:
        if self.transport == "sse":
            return self.track(await SsePeer.open(self.app, self.token, rcvbuf=rcvbuf))
        return self.track(await WsPeer.open(self.app, self.token, rcvbuf=rcvbuf))

    async def publish_big(self) -> str:
        return await publish_one(self.app, self.subject, "ap_1", blob=BIG)

    async def revoke(self) -> None:
        until = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        answer = await self.http.post(
            "/v1/revocations",
            json={"sub": self.subject, "until": until},
            headers=bearer(self.tokens.admin()),
        )
        assert answer.status_code == 201, answer.text

    async def queue_closed(self, queues: list[DeliveryQueue], reason: CloseReason) -> None:
        """Wait until the server decided to close the stream for `reason` (one of
        `queues`, the stream's, taken before: the stream may end at once)."""
        await eventually(
            lambda: any(q.close_reason is reason for q in queues),
            what=f"a queue closed as {reason.value}",
        )

    async def stream_gone(self) -> None:
        """Wait until the server ended the stream (without the client's help)."""
        await eventually(lambda: not self.app.state.hub.queues, what="the stream to end")


Step = Callable[[Ctx], Awaitable[None]]


# --- what the client saw --------------------------------------------------------------


def closing_frame(peer: SsePeer) -> dict[str, Any]:
    """The SSE stream's last frame (`closed` or `reconnect`), as JSON."""
    last = peer.frames[-1]
    assert last.event in ("closed", "reconnect"), peer.frames[-3:]
    data: dict[str, Any] = last.json()
    return data


def saw_end(peer: SsePeer | WsPeer, reason: CloseReason) -> None:
    """The client was told why, the way `service/fanout/closing.py` says."""
    public = {
        CloseReason.REVOKED: ("closed", "revoked", 4003),
        CloseReason.TOKEN_EXPIRED: ("closed", "token_expired", 4001),
        CloseReason.TOO_SLOW: ("reconnect", "too_slow", 4008),
        CloseReason.SHUTDOWN: ("reconnect", "shutdown", 1001),
    }
    event, text, code = public[reason]
    if isinstance(peer, SsePeer):
        assert peer.frames[-1].event == event, peer.frames[-3:]
        assert closing_frame(peer)["reason"] == text
        assert peer.partial == b"", peer.partial[:200]
    else:
        assert peer.close_code == code, (peer.close_code, peer.close_reason, peer.messages[-3:])
        if event == "reconnect":
            assert peer.messages[-1]["type"] == "reconnect", peer.messages[-3:]
            assert peer.messages[-1]["reason"] == text


async def leave(ctx: Ctx, peer: SsePeer | WsPeer) -> None:
    """The client closes: an SSE client can only drop the connection; a WebSocket
    client sends its close frame and goes without waiting for the answer."""
    if isinstance(peer, WsPeer):
        await peer.close_politely()
    else:
        peer.close()


# --- before headers -------------------------------------------------------------------


def half(request: bytes) -> bytes:
    """The request line and some headers, never the blank line that ends them."""
    return request[: request.index(b"\r\n", 20) + 2]


async def first_bytes(ctx: Ctx) -> tuple[Peer, bytes]:
    if ctx.transport == "sse":
        peer = ctx.track(await SsePeer.connect_only(ctx.app))
        return peer, SsePeer.request(ctx.token)
    ws, handshake = await WsPeer.start(ctx.app, ctx.token)
    return ctx.track(ws), handshake


async def client_sends_half_then_closes(ctx: Ctx) -> None:
    peer, request = await first_bytes(ctx)
    await peer.send(half(request))
    peer.close()


async def client_sends_request_then_closes(ctx: Ctx) -> None:
    """SSE: the whole request, then the close, before any answer."""
    peer, request = await first_bytes(ctx)
    await peer.send(request)
    peer.close()


async def client_subscribes_and_closes_after_101(ctx: Ctx) -> None:
    """WebSocket: the handshake answered, `subscribe` sent, then the close at once."""
    peer, handshake = await WsPeer.start(ctx.app, ctx.token)
    ctx.track(peer)
    await peer.send(handshake)
    await peer.read_until(lambda: peer.response is not None, "the handshake's answer")
    assert peer.response is not None
    assert peer.response.status_code == 101
    await peer.send_json({"type": "subscribe"})
    peer.close()


async def server_times_out_the_headers(ctx: Ctx) -> None:
    peer, request = await first_bytes(ctx)
    await peer.send(half(request))
    await peer.read_to_end()
    assert peer.raw.startswith(b"HTTP/1.1 408 "), bytes(peer.raw[:100])


# --- mid-frame ------------------------------------------------------------------------


async def into_a_big_frame(ctx: Ctx) -> SsePeer | WsPeer:
    """A stream whose client has read part of a large event, not all of it."""
    peer = await ctx.open(rcvbuf=SMALL_RCVBUF)
    before = peer.received
    await ctx.publish_big()
    await peer.read_until(lambda: peer.received - before > 1000, "part of the big event")
    if isinstance(peer, SsePeer):
        assert not peer.of_event("appointment.rescheduled"), "the whole event arrived"
        assert peer.partial, "no frame begun"
    else:
        assert not peer.events, "the whole event arrived"
    return peer


async def client_closes_mid_frame(ctx: Ctx) -> None:
    peer = await into_a_big_frame(ctx)
    # Unread bytes wait in its buffer: the kernel answers with a RST.
    peer.close()


async def server_revokes_mid_frame(ctx: Ctx) -> None:
    peer = await into_a_big_frame(ctx)
    queues = list(ctx.app.state.hub.queues)
    await ctx.revoke()
    await ctx.queue_closed(queues, CloseReason.REVOKED)
    await peer.read_to_end()
    # The frame begun is finished, then the stream ends: nothing torn, nothing after.
    if isinstance(peer, SsePeer):
        (frame,) = peer.of_event("appointment.rescheduled")
        assert frame.json()["data"]["blob"] == BIG
    else:
        (event,) = peer.events
        assert event["data"]["blob"] == BIG
    saw_end(peer, CloseReason.REVOKED)


# --- paused by backpressure -------------------------------------------------------------


def send_paused(app: RunningApp) -> bool:
    """A writer is suspended inside a send: flow control paused it (the clock's
    view of a send in progress, which its send timeout acts on)."""
    watches: Iterable[Watched] = list(app.state.clock._watches)  # type: ignore[arg-type]
    return any(watch.send_started for watch in watches)


async def stall(ctx: Ctx) -> SsePeer | WsPeer:
    """A client that stopped reading, with big events published until the server's
    send to it is paused."""
    peer = await ctx.open(rcvbuf=SMALL_RCVBUF)
    hub = ctx.app.state.hub
    for published in range(1, MAX_TO_PAUSE + 1):
        await ctx.publish_big()

        def handed_over_or_paused(count: int = published) -> bool:
            delivered = sum(q.delivered for q in hub.queues)
            return delivered >= count or (send_paused(ctx.app) and any(hub.queues))

        await eventually(handed_over_or_paused, what=f"event {published} written or paused")
        if send_paused(ctx.app):
            return peer
    raise AssertionError(f"no send paused after {MAX_TO_PAUSE} events of {len(BIG)} bytes")


async def client_closes_while_paused(ctx: Ctx) -> None:
    peer = await stall(ctx)
    peer.close()


async def server_finds_it_too_slow(ctx: Ctx) -> None:
    peer = await stall(ctx)
    queues = list(ctx.app.state.hub.queues)
    queue_max = ctx.app.state.settings.client_queue_max
    for _ in range(queue_max + 1):
        await ctx.publish_big()
    # Closed while the send was paused (`stall` returned once it was); a live SSE
    # stream that owns its socket ends at once (its last frame goes to the
    # transport's buffer), a writer task stays in its send until the peer reads.
    await ctx.queue_closed(queues, CloseReason.TOO_SLOW)
    await peer.read_to_end()
    saw_end(peer, CloseReason.TOO_SLOW)


async def connection_dropped(ctx: Ctx) -> None:
    """uvicorn holds no connection any more, while the client has not read on."""
    connections = ctx.app.server.server_state.connections
    await eventually(lambda: not connections, what="the stalled connection dropped")


async def server_send_times_out(ctx: Ctx) -> None:
    """The client never reads again: the clock ends the stuck stream, and the
    connection is dropped (an SSE stream's last frame gets one more send timeout
    in the buffer, then the socket is reset): the server keeps nothing for a peer
    that does not read."""
    peer = await stall(ctx)
    await ctx.stream_gone()
    await connection_dropped(ctx)
    await peer.read_to_end()


# --- during a heartbeat ---------------------------------------------------------------


def beats(peer: SsePeer | WsPeer) -> int:
    return peer.heartbeats if isinstance(peer, SsePeer) else peer.pings


async def client_closes_between_heartbeats(ctx: Ctx) -> None:
    peer = await ctx.open()
    await peer.read_until(lambda: beats(peer) >= 3, "three heartbeats")
    await leave(ctx, peer)


async def server_revokes_while_heartbeats_flow(ctx: Ctx) -> None:
    """SSE: a heartbeat never ends a stream; a revocation arrives while they flow."""
    peer = await ctx.open()
    assert isinstance(peer, SsePeer)
    await peer.read_until(lambda: peer.heartbeats >= 3, "three heartbeats")
    await ctx.revoke()
    await peer.read_to_end()
    saw_end(peer, CloseReason.REVOKED)


async def server_ping_times_out(ctx: Ctx) -> None:
    """WebSocket: the client answers pings while it reads, then stops reading."""
    peer = await ctx.open()
    assert isinstance(peer, WsPeer)
    await peer.read_until(lambda: peer.pings >= 2, "two pings")
    await ctx.stream_gone()
    await peer.read_to_end()


# --- token-expiry warning -------------------------------------------------------------


def warned(peer: SsePeer | WsPeer) -> bool:
    if isinstance(peer, SsePeer):
        return bool(peer.of_event("token_expiring"))
    return bool(peer.of_type("token_expiring"))


async def client_closes_on_the_warning(ctx: Ctx) -> None:
    peer = await ctx.open()
    await peer.read_until(lambda: warned(peer), "token_expiring")
    await leave(ctx, peer)


async def server_expires_the_token(ctx: Ctx) -> None:
    peer = await ctx.open()
    await peer.read_until(lambda: warned(peer), "token_expiring")
    await peer.read_to_end()
    saw_end(peer, CloseReason.TOKEN_EXPIRED)


# --- shutdown -------------------------------------------------------------------------


class _EndOfWindow:
    """`random` for the drain: every stream's hint at the end of the jitter window."""

    @staticmethod
    def uniform(low: float, high: float) -> float:
        del low
        return high


async def client_closes_during_the_drain(ctx: Ctx) -> None:
    peer = await ctx.open()
    ctx.monkeypatch.setattr("service.state.random", _EndOfWindow())
    ctx.app.state.begin_drain()
    assert ctx.app.state.draining
    assert all(q.close_reason is None for q in ctx.app.state.hub.queues)
    await leave(ctx, peer)


async def server_drains(ctx: Ctx) -> None:
    peer = await ctx.open()
    ctx.app.state.begin_drain()
    await peer.read_to_end()
    saw_end(peer, CloseReason.SHUTDOWN)


async def server_drains_a_stalled_client(ctx: Ctx) -> None:
    """The drain begins while the client has stopped reading (its send paused): the
    reconnect hint cannot pass. At the drain's end (`AppState.finish_drain`, what
    the exit signal waits for before the server's own shutdown) the stuck send is
    aborted and the connection dropped, so the server's shutdown finds nothing to
    wait for. SSE logs `shutdown` (its queue's reason, set by the drain first); a
    WebSocket `client_gone` (an aborted send ends its session that way)."""
    peer = await stall(ctx)
    state = ctx.app.state
    queues = list(state.hub.queues)
    state.begin_drain()
    await ctx.queue_closed(queues, CloseReason.SHUTDOWN)
    assert await state.finish_drain()
    await connection_dropped(ctx)
    await peer.read_to_end()


# --- the cases ------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    transport: Transport
    point: str
    side: str
    step: Step
    # `close_reason` of the one `stream_closed`; None: no stream opened.
    reason: CloseReason | None
    settings: Mapping[str, Any] = field(default_factory=dict)
    token_ttl_s: int = 3600

    @property
    def id(self) -> str:
        return f"{self.transport}-{self.point}-{self.side}"


HEARTBEATS = {"heartbeat_s": 0.2, "ws_ping_interval_s": 0.2, "ws_ping_timeout_s": 20.0}
DRAIN = {"shutdown_grace_s": 2.0, "shutdown_jitter_fraction": 0.5}
gone = CloseReason.CLIENT_GONE


def both(point: str, side: str, step: Step, reason: CloseReason | None, **kw: Any) -> list[Case]:
    return [
        Case("sse", point, side, step, reason, **kw),
        Case("ws", point, side, step, reason, **kw),
    ]


CASES: list[Case] = [
    *both("before_headers", "client_half", client_sends_half_then_closes, None),
    Case("sse", "before_headers", "client_whole", client_sends_request_then_closes, gone),
    Case("ws", "before_headers", "client_after_101", client_subscribes_and_closes_after_101, gone),
    *both(
        "before_headers",
        "server",
        server_times_out_the_headers,
        None,
        settings={"header_timeout_s": 0.5},
    ),
    *both("mid_frame", "client", client_closes_mid_frame, gone),
    *both("mid_frame", "server", server_revokes_mid_frame, CloseReason.REVOKED),
    *both("backpressure", "client", client_closes_while_paused, gone),
    *both(
        "backpressure",
        "server_too_slow",
        server_finds_it_too_slow,
        CloseReason.TOO_SLOW,
        settings={"client_queue_max": 4},
    ),
    # A live SSE stream owns its socket: stalled past the send timeout it is the
    # slow consumer (`too_slow`, its hint left in the buffer, then reset); a
    # WebSocket's aborted send ends its session as `client_gone`.
    Case(
        "sse",
        "backpressure",
        "server_send_timeout",
        server_send_times_out,
        CloseReason.TOO_SLOW,
        settings={"send_timeout_s": 1.0},
    ),
    Case(
        "ws",
        "backpressure",
        "server_send_timeout",
        server_send_times_out,
        gone,
        settings={"send_timeout_s": 1.0},
    ),
    *both("heartbeat", "client", client_closes_between_heartbeats, gone, settings=HEARTBEATS),
    Case(
        "sse",
        "heartbeat",
        "server",
        server_revokes_while_heartbeats_flow,
        CloseReason.REVOKED,
        settings=HEARTBEATS,
    ),
    Case(
        "ws",
        "heartbeat",
        "server",
        server_ping_times_out,
        gone,
        settings={**HEARTBEATS, "ws_ping_timeout_s": 0.5},
    ),
    *both("token_expiry", "client", client_closes_on_the_warning, gone, token_ttl_s=3),
    *both(
        "token_expiry",
        "server",
        server_expires_the_token,
        CloseReason.TOKEN_EXPIRED,
        token_ttl_s=3,
    ),
    *both("shutdown", "client", client_closes_during_the_drain, gone, settings=DRAIN),
    *both("shutdown", "server", server_drains, CloseReason.SHUTDOWN, settings=DRAIN),
    Case(
        "sse",
        "shutdown",
        "server_stalled",
        server_drains_a_stalled_client,
        CloseReason.SHUTDOWN,
        settings=DRAIN,
    ),
    Case("ws", "shutdown", "server_stalled", server_drains_a_stalled_client, gone, settings=DRAIN),
]


# --- what must be true after each -----------------------------------------------------


async def redis_subscribers(settings: Settings, channel: str) -> int:
    """Subscribers of `channel` in Redis (shard channel subscribers in Cluster)."""
    client = async_client(settings)
    try:
        if is_cluster(settings):
            # Routed by the channel's slot to the primary that holds it.
            answer = await client.execute_command("PUBSUB SHARDNUMSUB", channel)
        else:
            answer = await client.pubsub_numsub(channel)
        return sum(int(count) for _, count in answer)
    finally:
        await client.aclose()


async def nothing_left(app: RunningApp, subject: str) -> None:
    state = app.state
    connections = app.server.server_state.connections

    def empty() -> bool:
        return (
            not state.hub.queues
            and not state.hub.channel_names
            and state.limiter.total == 0
            and not state.clock._watches
            and not state.clock._expiries
            and not connections
        )

    def what_is_left() -> str:
        return (
            f"queues={len(state.hub.queues)} channels={state.hub.channel_names} "
            f"admitted={state.limiter.total} watches={len(state.clock._watches)} "
            f"expiries={len(state.clock._expiries)} connections={len(connections)}"
        )

    try:
        await eventually(empty, what="the hub, limits, clock and server to be empty")
    except AssertionError:
        raise AssertionError(f"left behind: {what_is_left()}") from None
    channel = state.keys.patient_channel(subject)

    async def unsubscribed() -> bool:
        return await redis_subscribers(state.settings, channel) == 0

    await eventually(unsubscribed, what="no subscriber of the patient's channel in Redis")


def open_streams(transport: Transport) -> float:
    return metric("notify_open_streams", transport=transport)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_close_at_every_point(
    case: Case,
    make_settings: SettingsFactory,
    tokens: Tokens,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    subject = f"pt_{case.transport}_{case.point}_{case.side}"
    settings = make_settings(**case.settings)
    gauge_before = open_streams(case.transport)
    log = CapturedLog()
    try:
        async with run_app(settings) as app:
            log.attach()
            async with httpx.AsyncClient(base_url=app.base_url, timeout=30) as http:
                ctx = Ctx(
                    app=app,
                    http=http,
                    tokens=tokens,
                    transport=case.transport,
                    subject=subject,
                    token=tokens.patient(subject, ttl_s=case.token_ttl_s),
                    monkeypatch=monkeypatch,
                )
                try:
                    await case.step(ctx)
                finally:
                    for peer in ctx.peers:
                        peer.close()
            await nothing_left(app, subject)
            assert open_streams(case.transport) == gauge_before
    finally:
        log.detach()

    lines = log.lines
    opened = log.of("stream_opened", subject)
    closed = log.of("stream_closed", subject)
    expected = 0 if case.reason is None else 1
    assert len(opened) == expected, json.dumps(opened)
    assert len(closed) == expected, json.dumps(closed)
    if case.reason is not None:
        assert closed[0]["close_reason"] == case.reason.value, closed[0]
        assert closed[0]["transport"] == opened[0]["transport"] == case.transport
    if case.transport == "ws":
        ws_closed = log.of("ws_closed", subject)
        assert len(ws_closed) == expected, json.dumps(ws_closed)
        if case.reason is not None:
            assert ws_closed[0]["close_reason"] == case.reason.value
    assert not log.trouble(), json.dumps(log.trouble(), indent=1)[:4000]
    assert any(line["event"] == "stopped" for line in lines), "the app's shutdown was not logged"
