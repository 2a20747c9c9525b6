"""Calibration peer for the generator: the least work a Python fan-out can do.

NOT a service and NOT a baseline: no framework, no validation, no token check
(the patient id is read from the unverified JWT payload), no heartbeats. One raw
Redis connection (``PSUBSCRIBE notify:patient:*``, channels
``notify:patient:{<patient_id>}``) and a dict of channel ->
transports; each message is written as an SSE frame to the transports of its
channel. ``python -m bench --calibrate`` runs the broadcast ladder against it
to show how many deliveries per second the generator itself can absorb.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json


class RespReader(asyncio.Protocol):
    def __init__(self, hub: dict):
        self.hub = hub
        self.buf = b""

    def connection_made(self, transport):
        transport.write(b"*2\r\n$10\r\nPSUBSCRIBE\r\n$16\r\nnotify:patient:*\r\n")

    def data_received(self, data):
        buf = self.buf + data if self.buf else data
        pos = 0
        n = len(buf)
        while pos < n:
            if buf[pos : pos + 1] != b"*":
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    break
                pos = eol + 2
                continue
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            count = int(buf[pos + 1 : eol])
            p = eol + 2
            parts = []
            ok = True
            for _ in range(count):
                e = buf.find(b"\r\n", p)
                if e < 0:
                    ok = False
                    break
                if buf[p : p + 1] == b":":
                    parts.append(buf[p + 1 : e])
                    p = e + 2
                    continue
                ln = int(buf[p + 1 : e])
                if e + 2 + ln + 2 > n:
                    ok = False
                    break
                parts.append(buf[e + 2 : e + 2 + ln])
                p = e + 2 + ln + 2
            if not ok:
                break
            pos = p
            if parts and parts[0] == b"pmessage":
                chan = parts[2][len(b"notify:patient:{") : -1]  # notify:patient:{pt_1}
                frame = b"data: " + parts[3] + b"\n\n"
                for t in self.hub.get(chan, ()):
                    t.write(frame)
        self.buf = buf[pos:]


class SSEServer(asyncio.Protocol):
    def __init__(self, hub: dict):
        self.hub = hub
        self.buf = b""
        self.chan = None
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        if self.chan is not None:
            return
        self.buf += data
        if b"\r\n\r\n" not in self.buf:
            return
        chan = b"pt_00000"
        for line in self.buf.split(b"\r\n"):
            if line.lower().startswith(b"authorization:"):
                tok = line.split(b" ")[-1].split(b".")
                payload = tok[1] + b"=" * (-len(tok[1]) % 4)
                chan = json.loads(base64.urlsafe_b64decode(payload))["sub"].encode()
        self.chan = chan
        self.hub.setdefault(chan, set()).add(self.transport)
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\r\nretry: 3000\n\n"
        )

    def connection_lost(self, exc):
        if self.chan is not None:
            self.hub.get(self.chan, set()).discard(self.transport)


async def main(port: int, redis_port: int) -> None:
    loop = asyncio.get_running_loop()
    hub: dict = {}
    await loop.create_connection(lambda: RespReader(hub), "127.0.0.1", redis_port)
    server = await loop.create_server(lambda: SSEServer(hub), "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--redis-port", type=int, required=True)
    a = ap.parse_args()
    import uvloop

    uvloop.install()
    asyncio.run(main(a.port, a.redis_port))
