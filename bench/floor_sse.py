"""The floor: the least one authenticated SSE stream can cost in Python (benchmark peer).

A benchmark peer, never product code. ``python -m bench targets`` runs the idle-RSS
and connect-rate rows against it in the same run as our service and Nchan (issue
23), so the distance between today's service and what Python can do is measured,
not guessed. It mirrors ``../shared/reference/floor_sse.py``, the reference the
issue quotes, rewritten clean and typed:

* a raw ``asyncio.Protocol`` on uvloop; the request head parsed by httptools;
* the bearer token verified with PyJWT on every connect: HS256 only, the service's
  audience, issuer and leeway, the claims the service requires (``exp``, ``sub``,
  ``aud``, ``iss``);
* a bad or missing token: ``401`` and the connection closed; a request httptools
  cannot parse: ``400`` and closed;
* a good one: the SSE response head (``text/event-stream``, ``no-cache``,
  ``X-Accel-Buffering: no``) and ``retry: 3000`` written in one write, then the
  stream is held (the protocol object in a set) until the client leaves.

Nothing else, on purpose: no routing (any path is a stream), no Redis, no events, no
heartbeats, no limits, no metrics, no logs, no graceful shutdown (SIGTERM ends the
process). Two small departures from the reference, both to measure what a stream
must keep rather than what a sketch happened to keep: the token bytes are dropped
once verified (the reference keeps them for the stream's life), and every stream is
held (the reference keys its dict by subject, so a second stream of one subject
replaces the first's entry).

Settings come from the environment, named as for ``notify serve``:
``NOTIFY_JWT_SECRET`` (required), ``NOTIFY_JWT_AUDIENCE`` (default ``notify``),
``NOTIFY_JWT_ISSUER`` (``notify-dev``), ``NOTIFY_JWT_LEEWAY_S`` (``10``).

    NOTIFY_JWT_SECRET=... python -m bench.floor_sse --port 8099
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

import httptools
import jwt
import uvloop

REQUIRED_CLAIMS = ["exp", "sub", "aud", "iss"]

STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"content-type: text/event-stream\r\n"
    b"cache-control: no-cache\r\n"
    b"x-accel-buffering: no\r\n"
    b"\r\n"
    b"retry: 3000\n\n"
)
UNAUTHORIZED = (
    b"HTTP/1.1 401 Unauthorized\r\n"
    b"www-authenticate: Bearer\r\n"
    b"content-length: 0\r\n"
    b"connection: close\r\n"
    b"\r\n"
)
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


@dataclass(frozen=True, slots=True)
class Verifier:
    """HS256 bearer-token verification with the service's audience and issuer."""

    secret: str
    audience: str = "notify"
    issuer: str = "notify-dev"
    leeway_s: int = 10

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Verifier:
        return cls(
            secret=env["NOTIFY_JWT_SECRET"],
            audience=env.get("NOTIFY_JWT_AUDIENCE", "notify"),
            issuer=env.get("NOTIFY_JWT_ISSUER", "notify-dev"),
            leeway_s=int(env.get("NOTIFY_JWT_LEEWAY_S", "10")),
        )

    def subject(self, authorization: bytes | None) -> str | None:
        """The token's subject, or None when the header holds no valid bearer token."""
        if authorization is None or authorization[:7].lower() != b"bearer ":
            return None
        try:
            claims = jwt.decode(
                authorization[7:].strip().decode("ascii"),
                self.secret,
                algorithms=["HS256"],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={"require": REQUIRED_CLAIMS},
            )
        except (jwt.InvalidTokenError, UnicodeDecodeError):
            return None
        sub = claims["sub"]
        return sub if isinstance(sub, str) else None


class FloorStream(asyncio.Protocol):
    """One connection: a request head until admitted, then a held SSE stream."""

    __slots__ = ("_authorization", "_held", "_parser", "_transport", "_verifier", "subject")

    def __init__(self, verifier: Verifier, held: set[FloorStream]) -> None:
        self._verifier = verifier
        self._held = held
        self._transport: asyncio.Transport | None = None
        self._parser: httptools.HttpRequestParser | None = None
        self._authorization: bytes | None = None
        self.subject: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._parser = httptools.HttpRequestParser(self)

    # httptools callbacks ------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"authorization":
            self._authorization = value

    def on_headers_complete(self) -> None:
        transport = self._transport
        assert transport is not None
        subject = self._verifier.subject(self._authorization)
        self._authorization = None
        if subject is None:
            transport.write(UNAUTHORIZED)
            transport.close()
            return
        self.subject = subject
        self._held.add(self)
        transport.write(STREAM_HEAD)

    # asyncio.Protocol ----------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        parser, transport = self._parser, self._transport
        if parser is None or transport is None:
            return  # admitted (or refused): whatever the client sends now is ignored
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # the head is complete and was answered; no upgrade is offered
        except httptools.HttpParserError:
            if self.subject is None and not transport.is_closing():
                transport.write(BAD_REQUEST)
                transport.close()
        if self.subject is not None or transport.is_closing():
            self._parser = None  # the head is done with: a held stream keeps no parser

    def connection_lost(self, exc: Exception | None) -> None:
        self._held.discard(self)
        self._parser = None
        self._transport = None


async def serve(host: str, port: int, verifier: Verifier) -> None:
    held: set[FloorStream] = set()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: FloorStream(verifier, held), host, port, backlog=16384
    )
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.floor_sse", description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    a = ap.parse_args(argv)
    uvloop.run(serve(a.host, a.port, Verifier.from_env(os.environ)))


if __name__ == "__main__":
    main()
