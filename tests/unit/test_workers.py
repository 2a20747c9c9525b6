"""What `service/workers.py` takes from uvicorn's supervisor, pinned: the `sockets`
list reaches each spawned worker by pickling, where `OwnListener` becomes a
listening socket of that worker's own."""

from __future__ import annotations

import multiprocessing
import pickle
import socket
from collections.abc import Iterator

import pytest
from uvicorn import Config
from uvicorn.supervisors.multiprocess import Process

from service.workers import OwnListener, bind_reuse_port


@pytest.fixture
def reserved() -> Iterator[socket.socket]:
    with bind_reuse_port("127.0.0.1", 0) as sock:
        yield sock


def unpickle(listener: OwnListener) -> socket.socket:
    restored = pickle.loads(pickle.dumps(listener))  # noqa: S301 (our own bytes)
    assert isinstance(restored, socket.socket)
    return restored


def test_each_unpickled_listener_is_a_socket_of_its_own_on_the_shared_port(
    reserved: socket.socket,
) -> None:
    port = reserved.getsockname()[1]
    listener = OwnListener("127.0.0.1", port, 128)
    with unpickle(listener) as first, unpickle(listener) as second:
        for sock in (first, second):
            assert sock.getsockname() == ("127.0.0.1", port)
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        assert first.fileno() != second.fileno()
        # The reserving socket never listens: the kernel hands it no connection.
        assert reserved.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 0


def test_uvicorn_hands_the_sockets_list_to_a_spawned_worker() -> None:
    """Spawned (not forked): the worker gets the list by pickling, so each one
    unpickles its own listener."""
    listener = OwnListener("127.0.0.1", 8000, 128)
    worker = Process(Config("service.main:create_app"), [listener])  # type: ignore[list-item]
    try:
        spawned = worker.process
        assert isinstance(spawned, multiprocessing.get_context("spawn").Process)
        assert spawned._kwargs["sockets"] == [listener]  # type: ignore[attr-defined]
    finally:
        worker.parent_conn.close()
        worker.child_conn.close()


def test_a_port_taken_without_reuse_port_fails_before_any_worker_starts() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError, match="in use"):
            bind_reuse_port("127.0.0.1", taken.getsockname()[1])
