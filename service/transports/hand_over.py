"""What both of `notify serve`'s protocols (`service/transports/http_protocol.py`,
`service/transports/ws_protocol.py`) give a connection's stream: a lighter
wake-up signal, the disconnect hook, and the one-time hand-over of the socket.

Each connection would get two `asyncio.Event`s (the request cycle's "message
arrived" and flow control's "writable"); each holds a `collections.deque` of
waiters from birth, 760 bytes of a stream's idle memory in tracemalloc
(bench/results/NOTES.md, issue 15). `LightEvent` allocates its waiter list only
while someone waits.

An endless response learns that its client left from `connection_lost` through
`DisconnectHook` (the scope's `notify.disconnect` extension), instead of a task
per stream blocked in `receive()`. The hook holds no reference back to the
protocol (the scope outlives nothing, no cycle). Its `abort` resets a connection
whose send the clock aborted (a peer that stopped reading): uvicorn would
otherwise close it gracefully, waiting to flush its buffers to a peer that never
reads.

A stream that takes its connection over (`SocketOwner`: the SSE stream, the
WebSocket stream) does it once, through a `OneHandOver` the protocol put in the
scope: the transport's protocol becomes the stream (`transport.set_protocol`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Final, Generic, Literal, Protocol, TypeVar


class LightEvent:
    """`asyncio.Event`'s interface (`is_set`, `set`, `clear`, `wait`) and semantics,
    without a deque per instance."""

    __slots__ = ("_value", "_waiters")

    def __init__(self, *, value: bool = False) -> None:
        self._value = value
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._value

    def set(self) -> None:
        if self._value:
            return
        self._value = True
        for future in self._waiters or ():
            if not future.done():
                future.set_result(None)

    def clear(self) -> None:
        self._value = False

    async def wait(self) -> Literal[True]:
        if self._value:
            return True
        future = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(future)
        try:
            await future
            return True
        finally:
            self._waiters.remove(future)
            if not self._waiters:
                self._waiters = None


DISCONNECT_EXTENSION: Final = "notify.disconnect"


class DisconnectHook:
    """Set `callback` to be called once when the connection is lost (at once if
    it is lost already); set it back to None to stop listening. `abort` resets
    the connection (a send that stalled for good: nothing more can reach the peer).

    It holds the connection's transport until the connection is lost (or upgraded to
    a WebSocket), so the transport → protocol → hook → transport cycle never
    outlives the connection."""

    __slots__ = ("_callback", "_lost_waiter", "_transport", "lost")

    def __init__(self, transport: asyncio.Transport | None = None) -> None:
        self._callback: Callable[[], None] | None = None
        self._transport = transport
        self._lost_waiter: asyncio.Future[None] | None = None
        self.lost = False

    @property
    def callback(self) -> Callable[[], None] | None:
        return self._callback

    @callback.setter
    def callback(self, callback: Callable[[], None] | None) -> None:
        self._callback = callback
        if callback is not None and self.lost:
            self._fire()

    def connection_lost(self) -> None:
        self.lost = True
        self._transport = None
        waiter, self._lost_waiter = self._lost_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self._fire()

    def forget_transport(self) -> None:
        """The connection is no longer this protocol's (a WebSocket upgrade)."""
        self._transport = None

    async def abort(self) -> None:
        """Reset the connection, dropping what is still buffered for the peer, and
        return once it is lost: uvicorn then counts the response's end as the
        client's departure, not as an app that returned without finishing it
        (which it logs as an error and answers with a graceful close, one that
        waits for a peer that does not read to take the buffered bytes, forever)."""
        transport = self._transport
        if transport is None or self.lost:
            return
        self._lost_waiter = waiter = asyncio.get_running_loop().create_future()
        # `connection_lost` follows in the next loop iteration, always.
        transport.abort()
        await waiter

    def _fire(self) -> None:
        callback, self._callback = self._callback, None
        if callback is not None:
            callback()


_T = TypeVar("_T")
_T_co = TypeVar("_T_co", covariant=True)


class SocketOwner(Protocol):
    """What takes a connection over (`service/transports/sse_stream.py:SseStream`):
    an asyncio protocol from then on, and a connection uvicorn's shutdown asks to end."""

    def connection_lost(self, exc: Exception | None) -> None: ...

    def data_received(self, data: bytes) -> None: ...

    def eof_received(self) -> bool | None: ...

    def pause_writing(self) -> None: ...

    def resume_writing(self) -> None: ...

    def shutdown(self) -> None: ...


class _HandsOver(Protocol[_T_co]):
    def hand_over(self, owner: SocketOwner) -> _T_co | None: ...


class OneHandOver(Generic[_T]):
    """A connection's hand-over, taken at most once: holds the protocol until the
    connection is lost or handed over (a cycle broken by the protocol, never left
    to the collector)."""

    __slots__ = ("_protocol",)

    def __init__(self, protocol: _HandsOver[_T]) -> None:
        self._protocol: _HandsOver[_T] | None = protocol

    def take(self, owner: SocketOwner) -> _T | None:
        """Give `owner` the connection; None when it cannot be had (see the
        protocol's `hand_over`), and the caller goes on through ASGI."""
        protocol, self._protocol = self._protocol, None
        if protocol is None:
            return None
        return protocol.hand_over(owner)

    def forget(self) -> None:
        self._protocol = None


def address(info: Any, *, local: bool = False) -> tuple[str, int | None] | None:
    """A transport's `sockname` (`local`) or `peername` as uvicorn's scope holds it
    (`uvicorn/protocols/utils.py:get_local_addr`, `get_remote_addr` on a socket):
    host and port of an IP address (an IPv6 one has two more fields), the path of
    a Unix socket for the server (port None), else None."""
    if isinstance(info, list | tuple) and len(info) >= 2:
        return (str(info[0]), int(info[1]))
    if local and isinstance(info, str):
        return (info, None)
    return None
