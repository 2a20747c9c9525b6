"""A TCP proxy for tests that lose a reply on purpose: every byte is forwarded,
except that the first reply the server sends after a request containing
`drop_reply_after` is swallowed and both sides of that connection are closed.
The request did reach the server (it ran); only its answer is lost."""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType
from typing import Self


class ReplyDroppingProxy:
    def __init__(self, upstream: tuple[str, int], *, drop_reply_after: bytes) -> None:
        self._upstream = upstream
        self._marker = drop_reply_after
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.dropped = threading.Event()
        self._armed = True
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._closing = False

    def __enter__(self) -> Self:
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing = True
        # shutdown() wakes the threads blocked in accept()/recv(); close() alone
        # does not on Linux.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self._upstream)
            with self._lock:
                self._sockets += [client, server]
            watch = threading.Event()
            for source, target, is_request in ((client, server, True), (server, client, False)):
                thread = threading.Thread(
                    target=self._pump, args=(source, target, is_request, watch), daemon=True
                )
                thread.start()
                self._threads.append(thread)

    def _pump(
        self, source: socket.socket, target: socket.socket, is_request: bool, watch: threading.Event
    ) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if is_request:
                    with self._lock:
                        if self._armed and self._marker in data:
                            self._armed = False
                            watch.set()
                elif watch.is_set():
                    # The reply to the marked request: lost with the connection.
                    self.dropped.set()
                    break
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
