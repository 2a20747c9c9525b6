"""Which process holds which accepted TCP connection, read from /proc (Linux): how
tests and `python -m bench targets` see the kernel's spread over worker processes
without the service reporting anything about itself."""

from __future__ import annotations

import os
from pathlib import Path

ESTABLISHED = "01"
LISTEN = "0A"


def child_pids(pid: int) -> list[int]:
    """Direct children of `pid`."""
    try:
        raw = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in raw.split()]


def _socket_inodes(pid: int) -> set[int]:
    inodes: set[int] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _tcp_inodes(local_port: int, state: str) -> set[int]:
    """Inodes of the TCP sockets in `state` whose local port is `local_port`."""
    inodes: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == state and int(fields[1].rsplit(":", 1)[1], 16) == local_port:
                inodes.add(int(fields[9]))
    return inodes


def connections_by_process(pids: list[int], port: int) -> dict[int, int]:
    """For each of `pids`: how many established connections it accepted on `port`."""
    established = _tcp_inodes(port, ESTABLISHED)
    return {pid: len(_socket_inodes(pid) & established) for pid in pids}


def listeners_by_process(pids: list[int], port: int) -> dict[int, set[int]]:
    """For each of `pids`: the sockets (inodes) it has listening on `port`; one
    socket shared by several processes shows up under each of them."""
    listening = _tcp_inodes(port, LISTEN)
    return {pid: _socket_inodes(pid) & listening for pid in pids}
