"""What `service/transports/http_protocol.py` takes from uvicorn's private httptools protocol,
pinned: the callback order the header deadline relies on, the attributes it reads,
and how `notify serve` hands it its settings. An uvicorn upgrade that changes any
of it fails here, not in production."""

from __future__ import annotations

import asyncio
import functools
import inspect
import pickle
from typing import Any, TypeVar, cast

import pytest
from prometheus_client import REGISTRY
from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from service.cli import uvicorn_options
from service.config import Settings
from service.transports.hand_over import DISCONNECT_EXTENSION, DisconnectHook, LightEvent
from service.transports.http_protocol import (
    DEFAULT_HEADER_TIMEOUT_S,
    HAND_OVER_EXTENSION,
    REQUEST_TIMEOUT_RESPONSE,
    HandOver,
    HttpProtocol,
    Taken,
)
from service.transports.ws_protocol import WS_HAND_OVER_EXTENSION, WsHandOver, WsProtocol, WsTaken
from tests.support.transport import RecordingTransport
from tests.support.waiting import eventually


async def app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def header_timeouts(stage: str) -> float:
    return REGISTRY.get_sample_value("notify_header_timeouts_total", {"stage": stage}) or 0.0


def connect(timeout_s: float) -> tuple[HttpProtocol, RecordingTransport]:
    # uvicorn annotates `http` as a class, but only ever calls it: a factory works,
    # and this is how `notify serve` passes it (the call below is Server.startup's).
    factory = functools.partial(HttpProtocol, header_timeout_s=timeout_s)
    config = Config(app, http=factory)  # type: ignore[arg-type]
    config.load()
    # How uvicorn's Server.startup builds the protocol for each connection.
    protocol = config.http_protocol_class(  # type: ignore[call-arg]
        config=config, server_state=ServerState(), app_state={}, _loop=asyncio.get_running_loop()
    )
    assert isinstance(protocol, HttpProtocol)
    transport = RecordingTransport()
    protocol.connection_made(transport)
    return protocol, transport


async def wait_closed(transport: RecordingTransport) -> None:
    await eventually(lambda: transport.closed, timeout_s=5, what="connection closed")


async def wait_answered(protocol: HttpProtocol) -> None:
    await eventually(lambda: protocol.cycle.response_complete, timeout_s=5, what="response sent")


def test_the_private_parts_we_use_exist() -> None:
    for name in (
        "connection_made",
        "connection_lost",
        "data_received",
        "on_message_begin",
        "on_headers_complete",
        "handle_websocket_upgrade",
        "timeout_keep_alive_handler",
    ):
        assert callable(getattr(HttpToolsProtocol, name)), name
    # The keyword arguments uvicorn's Server passes to the protocol class.
    params = inspect.signature(HttpToolsProtocol.__init__).parameters
    assert {"config", "server_state", "app_state", "_loop"} <= set(params)


async def test_uvicorn_itself_sets_no_deadline_before_a_request() -> None:
    """The reason for the adapter: uvicorn arms only its keep-alive timer, and only
    after a response; a connection that never finishes its headers has no timer."""
    config = Config(app, http="httptools")
    config.load()
    protocol = HttpToolsProtocol(
        config=config, server_state=ServerState(), app_state={}, _loop=asyncio.get_running_loop()
    )
    protocol.connection_made(RecordingTransport())
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n")
    assert protocol.timeout_keep_alive_task is None


async def test_a_partial_request_gets_408_and_is_closed_after_the_deadline() -> None:
    before = header_timeouts("in_headers")
    protocol, transport = connect(0.05)
    protocol.data_received(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")
    # httptools calls on_message_begin on the first byte: the request is partial.
    assert protocol._in_headers
    await wait_closed(transport)
    assert bytes(transport.written) == REQUEST_TIMEOUT_RESPONSE
    assert header_timeouts("in_headers") == before + 1


async def test_a_connection_that_sends_nothing_is_closed_silently() -> None:
    before = header_timeouts("before_request")
    protocol, transport = connect(0.05)
    await wait_closed(transport)
    assert transport.written == b""
    assert header_timeouts("before_request") == before + 1
    assert protocol._header_timer is None


async def test_complete_headers_cancel_the_deadline_for_the_whole_response() -> None:
    protocol, transport = connect(0.05)
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    # on_headers_complete ran and created the request cycle (uvicorn's `cycle`).
    assert protocol._header_timer is None
    assert protocol.cycle is not None
    assert isinstance(protocol.cycle.message_event, LightEvent)
    await wait_answered(protocol)
    # The keep-alive pause that follows is uvicorn's timer, not ours.
    assert protocol.timeout_keep_alive_task is not None
    assert protocol._header_timer is None
    assert transport.written.startswith(b"HTTP/1.1 204 ")
    assert not transport.closed


async def test_the_next_request_on_a_keep_alive_connection_has_its_own_deadline() -> None:
    before = header_timeouts("in_headers")
    protocol, transport = connect(0.2)
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await wait_answered(protocol)
    answered = len(transport.written)
    protocol.data_received(b"GET / HTTP/1.1\r\n")
    assert protocol._header_timer is not None
    assert protocol.timeout_keep_alive_task is None  # uvicorn cancels it on data
    await wait_closed(transport)
    assert bytes(transport.written[answered:]) == REQUEST_TIMEOUT_RESPONSE
    assert header_timeouts("in_headers") == before + 1


async def test_connection_lost_cancels_the_deadline() -> None:
    before = header_timeouts("before_request") + header_timeouts("in_headers")
    protocol, transport = connect(0.05)
    protocol.data_received(b"GET / HTTP/1.1\r\n")
    protocol.connection_lost(None)
    assert protocol._header_timer is None
    await asyncio.sleep(0.1)  # past the deadline: nothing fires
    assert header_timeouts("before_request") + header_timeouts("in_headers") == before
    assert transport.written == b""


async def test_a_websocket_upgrade_ends_the_deadline_and_drops_the_parser() -> None:
    protocol, transport = connect(0.05)
    protocol.data_received(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    assert protocol._header_timer is None
    assert protocol.parser is None
    # The transport now belongs to uvicorn's WebSocket protocol.
    assert transport.protocol is not protocol


async def test_a_websocket_holds_a_hook_that_can_reset_it_until_it_is_lost() -> None:
    """`notify serve`'s `ws` protocol puts a `DisconnectHook` in the accepted
    handshake's scope (`abort` resets a stalled connection); losing the connection
    empties it, so no transport is kept past it (no cycle either)."""

    async def ws_app(scope: Any, receive: Any, send: Any) -> None:
        while (await receive())["type"] != "websocket.disconnect":
            pass

    ws_class = uvicorn_options(Settings())["ws"]
    assert ws_class is WsProtocol
    config = Config(ws_app, http=functools.partial(HttpProtocol, header_timeout_s=1.0), ws=ws_class)  # type: ignore[arg-type]
    config.load()
    state = ServerState()
    protocol = config.http_protocol_class(  # type: ignore[call-arg]
        config=config, server_state=state, app_state={}, _loop=asyncio.get_running_loop()
    )
    transport = RecordingTransport()
    protocol.connection_made(transport)
    protocol.data_received(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    ws = transport.protocol
    assert isinstance(ws, WsProtocol)
    hook = ws.scope["extensions"][DISCONNECT_EXTENSION]
    assert isinstance(hook, DisconnectHook)
    assert hook._transport is transport
    ws.connection_lost(None)
    assert hook.lost
    assert hook._transport is None
    await eventually(lambda: not state.tasks, timeout_s=5, what="the session to end")


def test_notify_serve_passes_the_setting_in_a_picklable_protocol_factory() -> None:
    settings = Settings(header_timeout_s=1.5)
    factory = uvicorn_options(settings)["http"]
    assert isinstance(factory, functools.partial)
    assert factory.func is HttpProtocol
    assert factory.keywords == {"header_timeout_s": 1.5}
    # Workers are spawned processes: the factory travels inside uvicorn's Config.
    assert pickle.loads(pickle.dumps(factory)).keywords  # noqa: S301 (our own bytes) == {"header_timeout_s": 1.5}


def test_the_default_deadline_is_the_settings_default() -> None:
    assert Settings().header_timeout_s == DEFAULT_HEADER_TIMEOUT_S


@pytest.mark.parametrize("value", [0, -1, 301])
def test_the_deadline_is_bounded(value: float) -> None:
    with pytest.raises(ValueError, match="header_timeout_s"):
        Settings(header_timeout_s=value)


class Owner:
    """A socket owner that records what the transport tells it."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def connection_lost(self, exc: Exception | None) -> None:
        self.calls.append("connection_lost")

    def data_received(self, data: bytes) -> None:
        self.calls.append("data_received")

    def eof_received(self) -> bool | None:
        return None

    def pause_writing(self) -> None:
        self.calls.append("pause_writing")

    def resume_writing(self) -> None:
        self.calls.append("resume_writing")

    def shutdown(self) -> None:
        self.calls.append("shutdown")


def handing_over_app(owner: Owner, taken: list[Taken | None]) -> Any:
    """Headers and a first chunk through ASGI, then the hand-over, then returns."""

    async def stream(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        hand_over = scope["extensions"][HAND_OVER_EXTENSION]
        assert isinstance(hand_over, HandOver)
        taken.append(hand_over.take(owner))
        # A second taker gets nothing: the connection has one owner.
        taken.append(hand_over.take(Owner()))

    return stream


def connect_app(asgi: Any) -> tuple[HttpProtocol, RecordingTransport, ServerState]:
    factory = functools.partial(HttpProtocol, header_timeout_s=5.0)
    config = Config(asgi, http=factory)  # type: ignore[arg-type]
    config.load()
    state = ServerState()
    protocol = config.http_protocol_class(  # type: ignore[call-arg]
        config=config, server_state=state, app_state={}, _loop=asyncio.get_running_loop()
    )
    assert isinstance(protocol, HttpProtocol)
    transport = RecordingTransport()
    protocol.connection_made(transport)
    return protocol, transport, state


async def test_a_hand_over_gives_the_owner_the_transport_and_ends_uvicorns_cycle(
    caplog: pytest.LogCaptureFixture,
) -> None:
    owner = Owner()
    taken: list[Taken | None] = []
    protocol, transport, state = connect_app(handing_over_app(owner, taken))
    protocol.data_received(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
    cycle = protocol.cycle
    await eventually(lambda: len(taken) == 2 and not state.tasks, timeout_s=5, what="app done")
    first, second = taken
    assert first is not None
    assert second is None
    assert first.transport is transport
    assert first.chunked  # HTTP/1.1, no content-length: the owner frames chunks
    assert not first.write_paused
    # The transport calls the owner from now on; uvicorn's protocol let go of all.
    assert transport.protocol is cast(object, owner)
    assert cast(set[object], state.connections) == {owner}
    assert first.connections is state.connections
    assert protocol.cycle is None
    assert protocol.parser is None
    assert protocol.timeout_keep_alive_task is None
    # uvicorn's cycle saw a complete response: nothing written after the first
    # chunk, the socket not closed, no "returned without completing" error.
    assert cycle.response_complete
    assert not cycle.keep_alive
    assert transport.written.endswith(b"5\r\nfirst\r\n")
    assert not transport.closed
    assert "without completing" not in caplog.text


async def test_no_hand_over_before_the_headers_or_after_the_loss() -> None:
    owner = Owner()
    results: list[Taken | None] = []

    async def early(scope: Any, receive: Any, send: Any) -> None:
        results.append(scope["extensions"][HAND_OVER_EXTENSION].take(owner))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    protocol, transport, state = connect_app(early)
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await eventually(lambda: bool(results) and not state.tasks, timeout_s=5, what="app done")
    assert results == [None]
    assert getattr(transport, "protocol", None) is not owner
    # The connection goes on as uvicorn's (keep-alive armed).
    assert protocol.timeout_keep_alive_task is not None

    lost: list[Taken | None] = []
    gone = Owner()

    async def after_loss(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        protocol.connection_lost(None)
        lost.append(scope["extensions"][HAND_OVER_EXTENSION].take(gone))

    protocol, transport, state = connect_app(after_loss)
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await eventually(lambda: bool(lost) and not state.tasks, timeout_s=5, what="app done")
    assert lost == [None]


def test_the_cycle_parts_a_hand_over_uses_exist() -> None:
    """What `HttpProtocol.hand_over` reads and sets on uvicorn's request cycle."""
    params = inspect.signature(RequestResponseCycle.__init__).parameters
    assert {"keep_alive", "on_response", "flow"} <= set(params)
    source = inspect.getsource(RequestResponseCycle)
    for name in (
        "self.response_started",
        "self.response_complete",
        "self.chunked_encoding",
        "self.disconnected",
        "self.keep_alive",
        "self.on_response",
    ):
        assert name in source, name
    # `run_asgi` closes the transport only for a response that is not complete.
    run = inspect.getsource(RequestResponseCycle.run_asgi)
    assert "elif not self.response_complete and not self.disconnected" in run
    flow = inspect.getsource(FlowControl)
    assert "self.write_paused" in flow
    assert "self.read_paused" in flow


class SocketlessTransport(RecordingTransport):
    """A transport that records which extra infos were asked for: under uvloop,
    asking for the `socket` makes the transport keep a pseudo-socket and both
    address tuples for the connection's life."""

    def __init__(self, peername: Any, sockname: Any) -> None:
        super().__init__()
        self.infos = {"peername": peername, "sockname": sockname}
        self.asked: list[str] = []

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        self.asked.append(name)
        return self.infos.get(name, default)


# A connection's addresses as the transport gives them: IPv4, IPv6 (two more
# fields), a Unix socket (the server's path), none.
ADDRESSES = pytest.mark.parametrize(
    ("peername", "sockname"),
    [
        (("127.0.0.1", 50000), ("127.0.0.1", 8000)),
        (("::1", 50000, 0, 0), ("::1", 8000, 0, 0)),
        ("", "/run/notify.sock"),
        (None, None),
    ],
)


def address_transports(
    peername: Any, sockname: Any
) -> tuple[SocketlessTransport, SocketlessTransport]:
    """Two transports with these addresses: ours, and uvicorn's, which also has
    the `socket` that uvicorn's own look-ups ask for."""

    class FakeSocket:
        def getpeername(self) -> Any:
            return peername

        def getsockname(self) -> Any:
            return sockname

    theirs = SocketlessTransport(peername, sockname)
    theirs.infos["socket"] = FakeSocket()
    return SocketlessTransport(peername, sockname), theirs


P = TypeVar("P", HttpToolsProtocol, WebSocketsSansIOProtocol)


def uvicorn_protocol(cls: type[P], **config_options: str) -> P:
    """A protocol of `cls` as uvicorn builds one (`http=`/`ws=` chosen by the caller)."""
    config = Config(app, **config_options)  # type: ignore[arg-type]
    config.load()
    return cls(
        config=config, server_state=ServerState(), app_state={}, _loop=asyncio.get_event_loop()
    )


@ADDRESSES
async def test_connection_made_sets_what_uvicorns_does_without_asking_for_the_socket(
    peername: Any, sockname: Any
) -> None:
    """`HttpProtocol.connection_made` is uvicorn's, with the addresses read from
    `peername`/`sockname`: the same attributes, the same values as uvicorn's
    address look-ups on the socket give (an IPv6 address's host and port, a Unix
    socket's path), and the transport's `socket` never asked for."""

    ours_transport, theirs_transport = address_transports(peername, sockname)
    ours = uvicorn_protocol(HttpProtocol, http="httptools")
    theirs = uvicorn_protocol(HttpToolsProtocol, http="httptools")
    ours.connection_made(ours_transport)
    theirs.connection_made(theirs_transport)
    assert "socket" not in ours_transport.asked
    assert "socket" in theirs_transport.asked  # what uvicorn itself does
    mine = {"_header_timer", "_disconnect_hook", "_hand_over", "header_timeout_s"}
    ours_vars = {k: v for k, v in vars(ours).items() if k not in mine}
    assert set(ours_vars) == set(vars(theirs))
    assert (ours.server, ours.client, ours.scheme) == (theirs.server, theirs.client, theirs.scheme)
    assert ours.transport is ours_transport
    assert isinstance(ours.flow, FlowControl)
    assert ours in ours.connections
    ours.connection_lost(None)
    theirs.connection_lost(None)


def test_uvicorns_connection_made_is_still_the_one_copied() -> None:
    """`HttpProtocol.connection_made` copies uvicorn's: a change there must be
    looked at (and copied) on upgrade."""
    source = inspect.getsource(HttpToolsProtocol.connection_made)
    body = [line.strip() for line in source.splitlines()[3:] if line.strip()]
    assert body == [
        "self.connections.add(self)",
        "self.transport = transport",
        "self.flow = FlowControl(transport)",
        "self.server = get_local_addr(transport)",
        "self.client = get_remote_addr(transport)",
        'self.scheme = "https" if is_ssl(transport) else "http"',
        "if self.logger.level <= TRACE_LOG_LEVEL:",
        'prefix = "%s:%d - " % self.client if self.client else ""',
        'self.logger.log(TRACE_LOG_LEVEL, "%sHTTP connection made", prefix)',
    ]


@ADDRESSES
async def test_the_websocket_protocol_sets_what_uvicorns_does_without_asking_for_the_socket(
    peername: Any, sockname: Any
) -> None:
    """`WsProtocol.connection_made` (called at the upgrade, on the connection's
    transport) is uvicorn's with the addresses from `peername`/`sockname`: the same
    attributes and values, and the `socket`, which uvloop would keep for the life of
    the WebSocket stream the connection becomes, never asked for."""

    ours_transport, theirs_transport = address_transports(peername, sockname)
    ours = uvicorn_protocol(WsProtocol, ws="websockets-sansio")
    theirs = uvicorn_protocol(WebSocketsSansIOProtocol, ws="websockets-sansio")
    ours.connection_made(ours_transport)
    theirs.connection_made(theirs_transport)
    assert "socket" not in ours_transport.asked
    assert "socket" in theirs_transport.asked  # what uvicorn itself does
    assert set(vars(ours)) == set(vars(theirs))
    assert (ours.server, ours.client, ours.scheme) == (theirs.server, theirs.client, theirs.scheme)
    assert ours.transport is ours_transport
    assert ours in ours.connections


def test_uvicorns_websocket_connection_made_is_still_the_one_copied() -> None:
    """`WsProtocol.connection_made` copies uvicorn's: a change there must be looked
    at (and copied) on upgrade."""
    source = inspect.getsource(WebSocketsSansIOProtocol.connection_made)
    body = [line.strip() for line in source.splitlines()[1:] if line.strip()]
    assert body == [
        '"""Called when a connection is made."""',
        "transport = cast(Transport, transport)",
        "self.connections.add(self)",
        "self.transport = transport",
        "self.server = get_local_addr(transport)",
        "self.client = get_remote_addr(transport)",
        'self.scheme = "wss" if is_ssl(transport) else "ws"',
        "if self.logger.level <= TRACE_LOG_LEVEL:",
        'prefix = "%s:%d - " % self.client if self.client else ""',
        'self.logger.log(TRACE_LOG_LEVEL, "%sWebSocket connection made", prefix)',
    ]


# --- the WebSocket's hand-over (`WsProtocol.hand_over`) -----------------------------

UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
)


def client_frame(opcode: Opcode, data: bytes) -> bytes:
    return Frame(opcode, data).serialize(mask=True)


def upgraded(ws_app: Any) -> tuple[WsProtocol, RecordingTransport, ServerState]:
    """A WebSocket upgrade through `notify serve`'s protocols, `ws_app` its session."""
    ws_class = uvicorn_options(Settings())["ws"]
    config = Config(
        ws_app,
        http=functools.partial(HttpProtocol, header_timeout_s=1.0),  # type: ignore[arg-type]
        ws=ws_class,
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
    )
    config.load()
    state = ServerState()
    protocol = config.http_protocol_class(  # type: ignore[call-arg]
        config=config, server_state=state, app_state={}, _loop=asyncio.get_running_loop()
    )
    transport = RecordingTransport()
    protocol.connection_made(transport)
    protocol.data_received(UPGRADE)
    ws = transport.protocol
    assert isinstance(ws, WsProtocol)
    return ws, transport, state


async def test_a_websocket_hand_over_gives_the_owner_the_open_protocol_and_unread_messages(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Accepted, then taken over: the owner gets the transport and the `websockets`
    protocol uvicorn negotiated (OPEN), the messages the app had not read, the
    server's connection set; uvicorn's keepalive stops and its task returns without
    closing the socket."""
    owner = Owner()
    taken: list[WsTaken | None] = []
    go = asyncio.Event()

    async def session(scope: Any, receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        await go.wait()
        hand_over = scope["extensions"][WS_HAND_OVER_EXTENSION]
        assert isinstance(hand_over, WsHandOver)
        taken.append(hand_over.take(owner))
        taken.append(hand_over.take(Owner()))

    ws, transport, state = upgraded(session)
    await eventually(lambda: ws.handshake_complete, timeout_s=5, what="accepted")
    assert transport.written.startswith(b"HTTP/1.1 101 ")
    assert ws.ping_timer is not None
    negotiated = ws.conn
    ws.data_received(client_frame(Opcode.TEXT, b"early") + client_frame(Opcode.BINARY, b"\x00"))
    go.set()
    await eventually(lambda: len(taken) == 2 and not state.tasks, timeout_s=5, what="app done")
    first, second = taken
    assert first is not None
    assert second is None
    assert first.transport is transport
    assert first.protocol is negotiated
    assert first.protocol.state is State.OPEN
    assert first.pending == ["early", None]
    assert not first.write_paused
    assert transport.protocol is cast(object, owner)
    assert cast(set[object], state.connections) == {owner}
    assert first.connections is state.connections
    # uvicorn's keepalive and the hook let go; its task closed nothing.
    assert ws.ping_timer is None
    assert ws.pong_timer is None
    assert ws._disconnect_hook is None
    assert not transport.closed
    # The handshake's headers are let go (the parser's generator keeps the request).
    assert not list(ws.request.headers.raw_items())
    assert "Exception" not in caplog.text
    # Frames are the owner's now: built by the protocol it got.
    first.protocol.send_text(b"hello")
    assert b"hello" in b"".join(first.protocol.data_to_send())


async def test_no_websocket_hand_over_after_the_loss_or_the_close() -> None:
    owner = Owner()
    results: list[WsTaken | None] = []

    async def lost(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        while (await receive())["type"] != "websocket.disconnect":
            pass
        results.append(scope["extensions"][WS_HAND_OVER_EXTENSION].take(owner))

    ws, transport, state = upgraded(lost)
    await eventually(lambda: ws.handshake_complete, timeout_s=5, what="accepted")
    ws.connection_lost(None)
    await eventually(lambda: bool(results) and not state.tasks, timeout_s=5, what="app done")
    assert results == [None]
    assert transport.protocol is ws

    closed: list[WsTaken | None] = []

    async def closes(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 1000})
        closed.append(scope["extensions"][WS_HAND_OVER_EXTENSION].take(owner))

    ws, transport, state = upgraded(closes)
    await eventually(lambda: bool(closed), timeout_s=5, what="app done")
    assert closed == [None]
    assert transport.protocol is ws
    ws.connection_lost(None)


def test_the_websocket_parts_a_hand_over_uses_exist() -> None:
    """What `WsProtocol.hand_over` reads and sets on uvicorn's sans-I/O WebSocket
    protocol: an upgrade that renames or drops any of it fails here."""
    init = inspect.getsource(WebSocketsSansIOProtocol.__init__)
    # The `websockets` protocol the owner takes over, and the state read.
    assert "self.conn = ServerProtocol(" in init
    for name in (
        "self.connections",
        "self.transport",
        "self.queue",
        "self.frames",
        "self.read_paused",
        "self.writable",
        "self.close_sent",
        "self.disconnected",
        "self.handshake_complete",
        "self.initial_response",
        "self.ping_timer",
        "self.pong_timer",
    ):
        assert name in init, name
    assert "self.request = event" in inspect.getsource(WebSocketsSansIOProtocol.handle_connect)
    assert "self.ping_timer" in inspect.getsource(WebSocketsSansIOProtocol.stop_keepalive)
    assert "self.pong_timer" in inspect.getsource(WebSocketsSansIOProtocol.stop_keepalive)
    # Its task closes "its" transport once the app returns: after a hand-over that
    # transport is a stand-in, so the owner's socket stays open.
    run = inspect.getsource(WebSocketsSansIOProtocol.run_asgi)
    assert "self.transport.close()" in run
    # Messages wait in an asyncio queue until `receive()`; reading pauses meanwhile.
    handle = inspect.getsource(WebSocketsSansIOProtocol.send_receive_event_to_app)
    assert "self.queue.put_nowait" in handle
    assert "self.transport.pause_reading()" in handle
    # The negotiated protocol: OPEN after `accept`, frames in and out.
    assert hasattr(ServerProtocol, "receive_data")
    assert hasattr(ServerProtocol, "events_received")
    assert hasattr(ServerProtocol, "data_to_send")
    for method in ("send_text", "send_ping", "send_close", "fail"):
        assert hasattr(ServerProtocol, method), method
