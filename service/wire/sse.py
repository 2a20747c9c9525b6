"""Every SSE block the service sends, encoded by sse-starlette's `ServerSentEvent`
(one encoder: it strips line breaks from `id:` and `event:` and splits multi-line
data into `data:` lines, so no value can inject a field).

Lines end with `\\n` (EventSource accepts `\\n`, `\\r\\n` or `\\r`; `\\n` is what
clients have always received). `tests/unit/test_wire.py` holds every block to
literal bytes.
"""

from __future__ import annotations

import json
from typing import Final, Protocol

from sse_starlette.event import ServerSentEvent

SEP: Final = "\n"

# A comment: browsers ignore it, proxies and the ALB see bytes.
HEARTBEAT: Final = ServerSentEvent(comment="keep-alive", sep=SEP).encode()
# The end of a chunked (`Transfer-Encoding: chunked`) body.
LAST_CHUNK: Final = b"0\r\n\r\n"


class Framed(Protocol):
    """An event or notice from the hub (`Delivery`), with room to keep its block:
    framed once, then shared by every SSE stream of its channel."""

    kind: str
    payload: str
    id: str | None
    sse: bytes | None
    sse_chunk: bytes | None


def _block(*, event: str | None = None, data: str | None = None, id: str | None = None) -> bytes:
    return ServerSentEvent(data, event=event, id=id, sep=SEP).encode()


def event_block(item: Framed) -> bytes:
    """`id:` (events only), `event:` and `data:` of a hub delivery, built once."""
    block = item.sse
    if block is None:
        block = item.sse = _block(event=item.kind, data=item.payload, id=item.id)
    return block


def chunk(body: bytes) -> bytes:
    """`body` as one chunk of a chunked HTTP/1.1 body (a stream's one write)."""
    return b"%x\r\n%b\r\n" % (len(body), body)


HEARTBEAT_CHUNK: Final = chunk(HEARTBEAT)


def event_chunk(item: Framed) -> bytes:
    """`event_block` as one chunk, built once: a broadcast's streams that have
    this delivery alone to write all write these bytes."""
    framed = item.sse_chunk
    if framed is None:
        framed = item.sse_chunk = chunk(event_block(item))
    return framed


def retry_block(retry_ms: int) -> bytes:
    """`retry:` alone: the client's reconnect delay."""
    return ServerSentEvent(retry=retry_ms, sep=SEP).encode()


def id_block(event_id: str) -> bytes:
    """`id:` alone: sets EventSource's last event id without dispatching an event."""
    return _block(id=event_id)


def json_block(event: str, data: dict[str, object], retry_ms: int | None = None) -> bytes:
    """A notice of the service's own (`gap`, `reconnect`, `closed`) with JSON data;
    `retry:` first when given, in the same block."""
    block = _block(event=event, data=json.dumps(data))
    if retry_ms is None:
        return block
    # ServerSentEvent writes `retry:` last; clients have always seen it first.
    return retry_block(retry_ms)[: -len(SEP)] + block
