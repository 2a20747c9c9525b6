"""PostgreSQL for the outbox tests: one server per session (a fresh, migrated
database per test), and servers of a test's own for fault tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from service.outbox.schema import migrate
from tests.support.postgres_server import PostgresServer


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    server.start()
    yield server
    server.remove()


def fresh_database(server: PostgresServer) -> str:
    """A new database on `server` with the outbox migrated; its DSN."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with server.connect(autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    dsn = server.dsn.rsplit("/", 1)[0] + f"/{name}"
    migrate(dsn)
    return dsn


@pytest.fixture
def outbox_dsn(postgres_server: PostgresServer) -> str:
    return fresh_database(postgres_server)


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A server of the test's own, free to be stopped, killed and restarted."""
    server = PostgresServer()
    server.start()
    yield server
    server.remove()
