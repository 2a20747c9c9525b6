"""Property-based tests of the HTTP API against its own OpenAPI document
(schemathesis), on a real `notify serve` process with a real Redis.

For every documented operation but the streams, with each role's valid token:
no 5xx, no request that breaks the schema accepted, every status and body as
documented. The stream routes never end, so they are excluded here and get
their own hostile-input tests (tests/api/test_hostile_tokens.py,
tests/api/test_streams_api.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from service.config import Settings
from service.main import create_app
from tests.conftest import Tokens, bearer
from tests.support.app_server import ServiceProcess
from tests.support.redis_server import RedisServer

ROLES = ("none", "patient", "staff", "service", "admin")
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


@pytest.fixture(scope="module")
def fuzz_settings(redis_server: RedisServer) -> Settings:
    # Module scope: one service process for every generated case.
    return Settings(
        _env_file=None,
        env="test",
        redis_url=redis_server.url,
        key_prefix="fuzz:",
        log_format="json",
        log_level="warning",
        gc_tuning=False,
    )


@pytest.fixture(scope="module")
def service(fuzz_settings: Settings) -> Iterator[ServiceProcess]:
    proc = ServiceProcess(fuzz_settings)
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def http_session() -> Iterator[requests.Session]:
    # One session for every case, closed here: without it schemathesis opens and
    # drops a session per call, and on a loaded machine a socket of a response it
    # never read to the end was collected unclosed mid-run (a ResourceWarning that
    # failed an unrelated case).
    with requests.Session() as session:
        yield session


def load_schema() -> schemathesis.BaseSchema:
    """The document the service serves at /openapi.json (built, not fetched: the
    cases are generated at collection time; the test checks the two agree)."""
    document = create_app(Settings(_env_file=None, env="test")).openapi()
    schema = schemathesis.openapi.from_dict(document)
    # Valid and schema-violating requests alike (the latter must all be refused).
    schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
    return schema.exclude(path_regex=r"/events$", method="GET")


def token_for(role: str) -> dict[str, str]:
    tokens = Tokens()
    match role:
        case "patient":
            return bearer(tokens.patient("pt_fuzz"))
        case "staff":
            return bearer(tokens.staff())
        case "service":
            return bearer(tokens.service())
        case "admin":
            return bearer(tokens.admin())
    return {}


schema = load_schema()


@pytest.mark.slow
@schema.parametrize()
@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_api_conforms_to_its_openapi_document(
    case: Case[Any], service: ServiceProcess, http_session: requests.Session
) -> None:
    # Every generated request once per role: the authorised one exercises the
    # operation itself, the others its documented refusals.
    for role in ROLES:
        case.call_and_validate(
            base_url=service.base_url,
            headers=token_for(role),
            checks=CHECKS,
            timeout=10,
            session=http_session,
        )


def test_the_stream_routes_are_documented_but_excluded(service: ServiceProcess) -> None:
    """The exclusion above names real routes, and they document their refusals."""
    document = httpx.get(f"{service.base_url}/openapi.json", timeout=10).json()
    assert document == create_app(Settings(_env_file=None, env="test")).openapi()
    streams = [
        path
        for path in document["paths"]
        if path.endswith("/events") and "get" in document["paths"][path]
    ]
    assert len(streams) == 3
    for path in streams:
        assert {"401", "403", "404", "422"} <= set(document["paths"][path]["get"]["responses"])
