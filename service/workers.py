"""`NOTIFY_WORKERS=N`: N uvicorn processes, each accepting on a listening socket of
its own (`SO_REUSEPORT`), so the kernel spreads connects evenly.

uvicorn's own multi-process mode binds one socket in the parent and every worker
accepts from that one queue: whichever worker's event loop wakes first takes the
connection, so a busy worker (its loop late) takes fewer and an idle one more, and
a connect storm lands unevenly. With `SO_REUSEPORT` every worker has its own
socket and accept queue on the same address, and the kernel hashes each new
connection (its address 4-tuple) to one of them: an even spread, whatever each
loop is doing (measured: bench/results/NOTES.md, issue 23). The price, the same as
for nginx's `reuseport`: the kernel does not look at load either, so a worker
whose loop stalls (a long GC pause, a blocked call) keeps receiving its share,
which waits in its own queue instead of going to the other worker; and
connections still queued on a worker's socket when that worker stops are reset
(at shutdown every worker stops anyway; a worker that dies is replaced by
uvicorn's supervisor at once).

uvicorn's supervisor (`uvicorn.supervisors.Multiprocess`) stays: it spawns,
watches, restarts and signals the workers. It hands its `sockets` to each spawned
worker by pickling them; `OwnListener` unpickles as a new `SO_REUSEPORT` socket in
the worker that receives it. `tests/unit/test_workers.py` pins that hand-over.
"""

from __future__ import annotations

import socket
from typing import Any, cast

from uvicorn import Config
from uvicorn.supervisors import Multiprocess


def bind_reuse_port(host: str, port: int) -> socket.socket:
    """A TCP socket bound to `host:port` with `SO_REUSEPORT`, not yet listening."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def listen_reuse_port(host: str, port: int, backlog: int) -> socket.socket:
    """A listening socket of this process's own on a shared address."""
    sock = bind_reuse_port(host, port)
    sock.listen(backlog)
    return sock


class OwnListener:
    """Stands for a listening socket in uvicorn's `sockets` list; every process it
    is pickled into gets its own `SO_REUSEPORT` socket on `host:port`."""

    __slots__ = ("backlog", "host", "port")

    def __init__(self, host: str, port: int, backlog: int) -> None:
        self.host = host
        self.port = port
        self.backlog = backlog

    def __reduce__(self) -> tuple[Any, tuple[str, int, int]]:
        return listen_reuse_port, (self.host, self.port, self.backlog)


def serve_workers(config: Config) -> None:
    """Run `config.workers` uvicorn workers until a signal stops them."""
    # The parent holds the address, bound but never listening (the kernel hands
    # connections only to listening sockets): a port taken by another program
    # fails here, before any worker starts, and port 0 is chosen once for all.
    with bind_reuse_port(config.host, config.port) as reserved:
        port = int(reserved.getsockname()[1])
        listener = OwnListener(config.host, port, config.backlog)
        Multiprocess(config, sockets=[cast(socket.socket, listener)]).run()
