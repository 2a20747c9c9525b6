"""Stream clients on a bare socket that read only when told to, byte by byte if need
be: a test can stop reading at any point (the kernel's receive buffer, as small as
`rcvbuf` makes it, is then all the server can fill), read part of a frame, and
close or reset the connection anywhere in a stream's life.

- `SsePeer`: an HTTP/1.1 `GET` of an event stream; the chunked body is de-chunked
  and parsed into SSE frames as it is read.
- `WsPeer`: a WebSocket driven by the `websockets` sans-I/O client protocol
  (which answers pings, but only when this peer reads).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
from collections.abc import Callable
from typing import Any

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from tests.support.app_server import RunningApp
from tests.support.sse import Frame as SseFrame
from tests.support.sse import parse_frames
from tests.support.ws import events_in

TIMEOUT_S = 30.0
RECV_BYTES = 65536


def _port(app: RunningApp) -> int:
    return int(app.base_url.rsplit(":", 1)[1])


class Peer:
    """A connected socket and what has been read from it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.received = 0
        # Everything read, as it came.
        self.raw = bytearray()
        self.ended = False
        self.was_reset = False

    @staticmethod
    async def connect(app: RunningApp, rcvbuf: int | None = None) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            # Before connecting: the window offered to the server depends on it.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", _port(app)))
        return sock

    async def send(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, data)

    def feed(self, data: bytes) -> None:
        raise NotImplementedError

    async def after_feed(self) -> None:
        """What the protocol must write back after reading (WebSocket: pongs)."""

    async def read_once(self) -> None:
        """One `recv`: whatever the kernel holds, at most `RECV_BYTES`."""
        try:
            data = await asyncio.get_running_loop().sock_recv(self.sock, RECV_BYTES)
        except ConnectionResetError:
            self.was_reset = True
            data = b""
        if not data:
            self.ended = True
            return
        self.received += len(data)
        self.raw += data
        self.feed(data)
        await self.after_feed()

    async def read_until(
        self, done: Callable[[], bool], what: str, timeout_s: float = TIMEOUT_S
    ) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                while not done():
                    if self.ended:
                        raise AssertionError(f"the connection ended before {what}")
                    await self.read_once()
        except TimeoutError:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}") from None

    async def read_bytes(self, count: int) -> None:
        """Read at least `count` more bytes (whatever frames they belong to)."""
        target = self.received + count
        await self.read_until(lambda: self.received >= target, f"{count} more bytes")

    async def read_to_end(self, timeout_s: float = TIMEOUT_S) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                while not self.ended:
                    await self.read_once()
        except TimeoutError:
            raise AssertionError(f"the connection did not end within {timeout_s}s") from None

    def close(self) -> None:
        """Close the socket (a FIN, or a RST when unread data is left)."""
        self.sock.close()

    def reset(self) -> None:
        """Close with a TCP RST."""
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


class _Dechunker:
    """HTTP/1.1 chunked transfer coding, decoded incrementally."""

    def __init__(self) -> None:
        self._raw = b""
        self._left = 0  # bytes of the current chunk still to come
        self._crlf = False  # the CRLF after a chunk's data is due
        self.done = False

    def feed(self, data: bytes) -> bytes:
        self._raw += data
        out = bytearray()
        while self._raw and not self.done:
            if self._left:
                take = self._raw[: self._left]
                out += take
                self._left -= len(take)
                self._raw = self._raw[len(take) :]
                if not self._left:
                    self._crlf = True
                continue
            if self._crlf:
                if len(self._raw) < 2:
                    break
                self._raw, self._crlf = self._raw[2:], False
                continue
            line, sep, rest = self._raw.partition(b"\r\n")
            if not sep:
                break
            size = int(line.split(b";", 1)[0], 16)
            self._raw = rest
            if size == 0:
                self.done = True
            self._left = size
        return bytes(out)


class SsePeer(Peer):
    """An SSE stream on a bare socket (HTTP/1.1, `Connection: close`)."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        self._head = b""
        self.status: int | None = None
        self.head = b""
        self._chunks: _Dechunker | None = None
        self._body = b""
        # Bytes of a block begun and not finished: a frame read in part.
        self.partial = b""
        self.frames: list[SseFrame] = []

    @staticmethod
    def request(token: str | None, path: str = "/v1/patients/me/events", extra: str = "") -> bytes:
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        return (
            f"GET {path} HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n"
            f"Connection: close\r\n{auth}{extra}\r\n"
        ).encode()

    @classmethod
    async def connect_only(cls, app: RunningApp, rcvbuf: int | None = None) -> SsePeer:
        return cls(await cls.connect(app, rcvbuf))

    @classmethod
    async def open(
        cls, app: RunningApp, token: str, *, rcvbuf: int | None = None, path: str | None = None
    ) -> SsePeer:
        """A stream once its first block (`retry:`) arrived: subscribed by then."""
        peer = await cls.connect_only(app, rcvbuf)
        await peer.send(cls.request(token, *(() if path is None else (path,))))
        await peer.read_until(lambda: bool(peer.frames), "the stream's first block")
        assert peer.status == 200, peer.head
        assert peer.frames[0].retry is not None, peer.frames[0]
        return peer

    def feed(self, data: bytes) -> None:
        if self.status is None:
            self._head += data
            head, sep, rest = self._head.partition(b"\r\n\r\n")
            if not sep:
                return
            self.head = head
            self.status = int(head.split(b" ", 2)[1])
            if b"transfer-encoding: chunked" in head.lower():
                self._chunks = _Dechunker()
            data = rest
        self._body += self._chunks.feed(data) if self._chunks is not None else data
        *blocks, self.partial = self._body.split(b"\n\n")
        self._body = self.partial
        for block in blocks:
            self.frames += parse_frames([*block.decode().split("\n"), ""])

    @property
    def body(self) -> bytes:
        """The body read so far, for a response that is not an event stream."""
        return self._body

    def of_event(self, name: str) -> list[SseFrame]:
        return [f for f in self.frames if f.event == name]

    @property
    def heartbeats(self) -> int:
        return sum(1 for f in self.frames if f.comments and not f.data)


class WsPeer(Peer):
    """A WebSocket on a bare socket: `websockets`' sans-I/O client protocol, fed
    only what this peer reads."""

    def __init__(self, sock: socket.socket, protocol: ClientProtocol) -> None:
        super().__init__(sock)
        self.protocol = protocol
        self.response: Response | None = None
        self.messages: list[dict[str, Any]] = []
        self.pings = 0
        self.close_code: int | None = None
        self.close_reason: str | None = None

    @classmethod
    async def start(
        cls, app: RunningApp, token: str | None, *, rcvbuf: int | None = None
    ) -> tuple[WsPeer, bytes]:
        """Connected, with the handshake request made but not sent (returned)."""
        protocol = ClientProtocol(parse_uri(f"{app.ws_url}/v1/ws"), max_size=None)
        request = protocol.connect()
        if token is not None:
            request.headers["Authorization"] = f"Bearer {token}"
        protocol.send_request(request)
        handshake = b"".join(protocol.data_to_send())
        return cls(await cls.connect(app, rcvbuf), protocol), handshake

    @classmethod
    async def open(cls, app: RunningApp, token: str, *, rcvbuf: int | None = None) -> WsPeer:
        """Handshake done, one subscription to the caller's events confirmed."""
        peer, handshake = await cls.start(app, token, rcvbuf=rcvbuf)
        await peer.send(handshake)
        await peer.read_until(lambda: peer.response is not None, "the handshake's answer")
        assert peer.response is not None
        assert peer.response.status_code == 101, peer.response
        await peer.send_json({"type": "subscribe"})
        await peer.read_until(lambda: bool(peer.of_type("subscribed")), "subscribed")
        return peer

    async def send_json(self, message: dict[str, Any]) -> None:
        self.protocol.send_text(json.dumps(message).encode())
        await self.after_feed()

    def feed(self, data: bytes) -> None:
        self.protocol.receive_data(data)
        for item in self.protocol.events_received():
            if isinstance(item, Response):
                self.response = item
            elif isinstance(item, Frame):
                self._on_frame(item)

    def _on_frame(self, frame: Frame) -> None:
        if frame.opcode is Opcode.TEXT:
            self.messages.append(json.loads(bytes(frame.data)))
        elif frame.opcode is Opcode.PING:
            self.pings += 1
        elif frame.opcode is Opcode.CLOSE:
            rcvd = self.protocol.close_rcvd
            self.close_code = rcvd.code if rcvd is not None else None
            self.close_reason = rcvd.reason if rcvd is not None else None

    async def after_feed(self) -> None:
        # Pongs and the close frame's echo; the server may be gone already.
        for chunk in self.protocol.data_to_send():
            if chunk:
                with contextlib.suppress(OSError):
                    await self.send(chunk)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("type") == kind]

    @property
    def events(self) -> list[dict[str, Any]]:
        return events_in(self.messages)

    async def close_politely(self) -> None:
        """A close frame (1000), then the socket closed without waiting for the
        server's answer: a client that leaves."""
        self.protocol.send_close(1000, "bye")
        await self.after_feed()
        self.close()
