"""Minimal, allocation-light client protocols for the load generator.

The generator has to receive far more events per second than the servers it
measures can send, on the same two cores, so it does not use httpx or the
websockets library: each connection is a bare ``asyncio.Protocol`` (on uvloop)
that parses just enough HTTP/1.1, chunked transfer coding, SSE and RFC 6455
framing to find the ``"seq"`` and ``"sent_ns"`` fields of each event.

Every event the generator publishes carries ``data.seq`` (per-channel sequence
number, 0 = readiness probe) and ``data.sent_ns`` (``time.monotonic_ns()`` in the
publisher, a clock shared by all processes on the machine). One regular
expression finds both in a received frame, whatever wraps it (SSE ``data:``
line, our WebSocket ``{"type":"event","event":...}`` envelope, Nchan's raw body).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import socket
import struct
import time

EVENT_RE = re.compile(rb'"seq":\s*(\d+),\s*"sent_ns":\s*(\d+)')
now_ns = time.monotonic_ns


def _set_linger0(transport: asyncio.BaseTransport) -> None:
    """Close with RST: no TIME_WAIT pile-up across 10,000-connection scenarios."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class Sink:
    """What a connection reports to (implemented by the worker)."""

    def on_ready(self, conn: StreamConn) -> None: ...
    def on_events(self, conn: StreamConn, buf: bytes, now: int) -> None: ...
    def on_failed(self, conn: StreamConn, why: str) -> None: ...
    def on_closed(self, conn: StreamConn) -> None: ...


class StreamConn(asyncio.Protocol):
    """Common state of one subscriber connection."""

    __slots__ = (
        "buf",
        "chan",
        "closed",
        "hdr",
        "last_id",
        "pings",
        "ready",
        "ready_fut",
        "refused",
        "request",
        "sid",
        "sink",
        "status",
        "t_ready",
        "t_start",
        "transport",
    )

    def __init__(
        self, sink: Sink, sid: int, chan: int, request: bytes, ready_fut: asyncio.Future | None
    ):
        self.sink = sink
        self.sid = sid
        self.chan = chan
        self.request = request
        self.transport: asyncio.Transport | None = None
        self.hdr = b""
        self.status = 0
        self.ready = False
        self.closed = False
        self.buf = b""
        self.t_start = now_ns()
        self.t_ready = 0
        self.pings = 0
        self.refused = False
        self.last_id: bytes | None = None
        self.ready_fut = ready_fut

    def connection_made(self, transport):  # type: ignore[override]
        self.transport = transport
        _set_linger0(transport)
        transport.write(self.request)

    def _mark_ready(self) -> None:
        if not self.ready:
            self.ready = True
            self.t_ready = now_ns()
            self.sink.on_ready(self)
            fut = self.ready_fut
            if fut is not None and not fut.done():
                fut.set_result(True)

    def _fail(self, why: str) -> None:
        fut = self.ready_fut
        if fut is not None and not fut.done():
            fut.set_result(False)
        self.sink.on_failed(self, why)
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc):  # type: ignore[override]
        was_closed = self.closed
        self.closed = True
        fut = self.ready_fut
        if fut is not None and not fut.done():
            fut.set_result(False)
            self.sink.on_failed(self, "closed before ready" + (f": {exc}" if exc else ""))
        elif not was_closed:
            self.sink.on_closed(self)

    def abort(self) -> None:
        """Close with a TCP reset (the linger-0 socket)."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def close_politely(self) -> None:
        """Close with a FIN, as a browser closing a tab does."""
        self.closed = True
        if self.transport is None:
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 0, 0))
        self.transport.close()

    def _headers(self, data: bytes) -> bytes | None:
        """Accumulate the response head; return the bytes after it once complete."""
        hdr = self.hdr + data
        end = hdr.find(b"\r\n\r\n")
        if end < 0:
            if len(hdr) > 65536:
                self._fail("header too large")
            self.hdr = hdr
            return None
        head = hdr[:end]
        self.hdr = head.lower()
        try:
            self.status = int(head[9:12])
        except ValueError:
            self.status = -1
        return hdr[end + 4 :]


class SSEConn(StreamConn):
    """An EventSource-like client: GET with Accept: text/event-stream."""

    __slots__ = ("cbuf", "chunked", "cleft", "cskip", "in_body")

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.chunked = False
        self.cleft = 0
        self.cskip = 0
        self.cbuf = b""
        self.in_body = False

    def data_received(self, data: bytes) -> None:  # type: ignore[override]
        now = now_ns()
        if not self.in_body:
            rest = self._headers(data)
            if rest is None:
                return
            if self.status != 200:
                self._fail(f"http {self.status}")
                return
            self.in_body = True
            self.chunked = b"transfer-encoding: chunked" in self.hdr
            self._mark_ready()
            data = rest
            if not data:
                return
        if self.chunked:
            data = self._dechunk(data)
            if not data:
                return
        buf = self.buf + data if self.buf else data
        # SSE lines end in \n, \r\n or \r (sse-starlette uses \r\n); a blank line ends a frame.
        cut = buf.rfind(b"\n\n")
        end = cut + 2
        cut2 = buf.rfind(b"\r\n\r\n")
        if cut2 >= 0 and cut2 + 4 > end:
            end = cut2 + 4
        if end < 2:
            self.buf = buf
            return
        frames = buf[:end]
        self.buf = buf[end:]
        if frames[0:1] == b":" or b"\n:" in frames:
            self.pings += frames.count(b":", 0, 1) + frames.count(b"\n:")
        if b"event: reconnect" in frames:
            self.refused = True
        idx = frames.rfind(b"id: ")
        if idx >= 0:
            self.last_id = frames[idx + 4 : frames.find(b"\n", idx)]
        self.sink.on_events(self, frames, now)

    def _dechunk(self, data: bytes) -> bytes:
        buf = self.cbuf + data if self.cbuf else data
        self.cbuf = b""
        out = []
        pos = 0
        n = len(buf)
        while pos < n:
            if self.cleft:
                take = min(self.cleft, n - pos)
                out.append(buf[pos : pos + take])
                pos += take
                self.cleft -= take
                if not self.cleft:
                    self.cskip = 2
                continue
            if self.cskip:
                take = min(self.cskip, n - pos)
                pos += take
                self.cskip -= take
                continue
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                self.cbuf = buf[pos:]
                break
            size = int(buf[pos:eol].split(b";", 1)[0], 16)
            pos = eol + 2
            if size == 0:
                self.abort()
                break
            self.cleft = size
        return b"".join(out) if len(out) != 1 else out[0]


def _mask(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(k, "little")).to_bytes(n, "little")


def ws_frame(payload: bytes, opcode: int = 1) -> bytes:
    """A masked client frame (RFC 6455 requires clients to mask)."""
    key = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return head + key + _mask(payload, key)


class WSConn(StreamConn):
    """A WebSocket client: handshake, optional subscribe message, then frames."""

    __slots__ = ("frag", "in_body", "subscribe")

    def __init__(self, *a, subscribe: bytes | None = None, **kw):
        super().__init__(*a, **kw)
        self.in_body = False
        self.subscribe = subscribe
        self.frag = b""

    def close_politely(self) -> None:
        """A close frame (1000), then FIN."""
        if self.transport is not None and self.in_body:
            self.transport.write(ws_frame(struct.pack("!H", 1000), opcode=8))
        super().close_politely()

    def data_received(self, data: bytes) -> None:  # type: ignore[override]
        now = now_ns()
        if not self.in_body:
            rest = self._headers(data)
            if rest is None:
                return
            if self.status != 101:
                self._fail(f"http {self.status}")
                return
            self.in_body = True
            if self.subscribe is not None:
                self.transport.write(ws_frame(self.subscribe))
            else:
                self._mark_ready()
            data = rest
            if not data:
                return
        buf = self.buf + data if self.buf else data
        pos = 0
        n = len(buf)
        texts = []
        while n - pos >= 2:
            b0 = buf[pos]
            ln = buf[pos + 1] & 0x7F
            hl = 2
            if ln == 126:
                if n - pos < 4:
                    break
                ln = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                hl = 4
            elif ln == 127:
                if n - pos < 10:
                    break
                ln = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                hl = 10
            if n - pos < hl + ln:
                break
            payload = buf[pos + hl : pos + hl + ln]
            pos += hl + ln
            op = b0 & 0x0F
            fin = b0 & 0x80
            if op == 1 or op == 2 or op == 0:
                if not fin:
                    self.frag += payload
                    continue
                if self.frag:
                    payload = self.frag + payload
                    self.frag = b""
                if not self.ready:
                    if b'"subscribed"' in payload:
                        self._mark_ready()
                        continue
                    if b'"error"' in payload or b'"reconnect"' in payload:
                        self.refused = True
                texts.append(payload)
            elif op == 9:  # ping -> pong
                self.pings += 1
                self.transport.write(ws_frame(payload, 0xA))
            elif op == 8:  # close
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self.transport.write(ws_frame(payload[:2], 0x8))
                if not self.ready:
                    self._fail(f"ws close {code}")
                self.abort()
                return
        self.buf = buf[pos:]
        if texts:
            self.sink.on_events(self, texts[0] if len(texts) == 1 else b"\n".join(texts), now)


def sse_request(
    host: str, port: int, path: str, token: str | None, last_event_id: str | None = None
) -> bytes:
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Accept: text/event-stream",
        "Cache-Control: no-cache",
    ]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    if last_event_id:
        lines.append(f"Last-Event-ID: {last_event_id}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def ws_request(host: str, port: int, path: str, token: str | None) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# --------------------------------------------------------------------------- publishers


class PipelinedHTTP(asyncio.Protocol):
    """HTTP/1.1 keep-alive client that pipelines requests and parses the responses.

    Used to publish to Nchan (POST /pub/<channel>) and to our service's
    POST /v1/events (history-backed publish, for the reconnect storm).
    """

    def __init__(self):
        self.transport = None
        self.buf = b""
        self.waiters: list[asyncio.Future] = []
        self.pending = 0
        self.want_body: list[bool] = []
        self.responses = 0
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):  # type: ignore[override]
        self.transport = transport
        _set_linger0(transport)

    def connection_lost(self, exc):  # type: ignore[override]
        for w in self.waiters:
            if not w.done():
                w.set_exception(ConnectionError("publisher connection lost"))
        if not self.lost.done():
            self.lost.set_result(exc)

    def send(self, raw: bytes, n: int, futs: list[asyncio.Future] | None = None) -> None:
        """Write ``n`` pipelined requests; ``futs`` (optional) get (status, body)."""
        self.pending += n
        if futs is None:
            self.waiters.extend([None] * n)  # type: ignore[list-item]
        else:
            self.waiters.extend(futs)
        self.transport.write(raw)

    def data_received(self, data):  # type: ignore[override]
        buf = self.buf + data if self.buf else data
        pos = 0
        while True:
            end = buf.find(b"\r\n\r\n", pos)
            if end < 0:
                break
            head = buf[pos:end]
            i = head.lower().find(b"content-length:")
            if i >= 0:
                j = head.find(b"\r\n", i)
                clen = int(head[i + 15 : j if j >= 0 else len(head)])
            else:
                clen = 0
            if len(buf) < end + 4 + clen:
                break
            body = buf[end + 4 : end + 4 + clen]
            status = int(head[9:12])
            pos = end + 4 + clen
            self.pending -= 1
            self.responses += 1
            w = self.waiters.pop(0) if self.waiters else None
            if w is not None and not w.done():
                w.set_result((status, body))
        self.buf = buf[pos:]


class RespPublisher(asyncio.Protocol):
    """Writes pipelined RESP ``PUBLISH`` commands to Redis and counts the replies."""

    def __init__(self):
        self.transport = None
        self.replies = 0
        self.sent = 0
        self.partial = b""

    def connection_made(self, transport):  # type: ignore[override]
        self.transport = transport

    def data_received(self, data):  # type: ignore[override]
        self.replies += data.count(b"\r\n")

    def connection_lost(self, exc):  # type: ignore[override]
        pass


def resp_command(*parts: bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for p in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(p), p))
    return b"".join(out)
