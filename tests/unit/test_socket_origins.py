"""A socket collected unclosed is reported with where it was opened
(`tests/support/socket_origins.py`, installed by `tests/conftest.py`)."""

from __future__ import annotations

import socket
from types import SimpleNamespace

from tests.support import socket_origins


def open_a_socket_here() -> socket.socket:
    return socket.socket(socket.AF_INET, socket.SOCK_STREAM)


def report_of(obj: object) -> SimpleNamespace:
    return SimpleNamespace(
        exc_type=ResourceWarning,
        exc_value=ResourceWarning(f"unclosed {obj!r}"),
        exc_traceback=None,
        err_msg=None,
        object=obj,
    )


def test_installed_for_the_whole_suite() -> None:
    assert socket.socket.__init__ is socket_origins._init_noting_origin


def test_a_socket_s_report_names_where_it_was_opened() -> None:
    sock = open_a_socket_here()
    try:
        report = socket_origins.with_origin(report_of(sock))
        assert report.err_msg.startswith("Exception ignored in (a socket opened at")
        assert "open_a_socket_here" in report.err_msg
        assert __file__ in report.err_msg
        assert report.object is sock
        assert report.exc_value is not None
    finally:
        sock.close()


def test_an_accepted_socket_is_noted_too() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname()[:2])
        accepted, _ = server.accept()
        try:
            assert socket_origins.origin(accepted) is not None
            assert socket_origins.origin(client) is not None
        finally:
            accepted.close()
            client.close()


def test_other_objects_reports_are_left_alone() -> None:
    report = report_of(object())
    assert socket_origins.with_origin(report) is report
