"""The floor peer of `python -m bench targets` (issue 23): `bench/floor_sse.py`
started by `bench.peers.start_floor` as the bench starts it, checked with a real
HTTP client: a bad token gets 401, a good one an SSE stream that opens with `retry:`.
A floor that answered anything else would measure nothing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest

from bench import peers
from tests.support.tokens import Tokens, bearer

pytestmark = pytest.mark.slow

PATH = "/v1/patients/me/events"


@pytest.fixture(scope="module")
def floor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[peers.Peer]:
    workdir: Path = tmp_path_factory.mktemp("floor")
    peer = peers.start_floor(workdir)  # returns once the port accepts connections
    try:
        yield peer
    finally:
        peer.stop()
    assert peer.proc.returncode is not None


@pytest.fixture
def http(floor: peers.Peer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://127.0.0.1:{floor.port}", timeout=5.0) as client:
        yield client


def wrong_audience_token() -> str:
    now = int(time.time())
    claims = {"sub": "pt_1", "aud": "someone-else", "iss": "notify-dev", "exp": now + 60}
    return jwt.encode(claims, peers.JWT_SECRET, algorithm="HS256")


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-token"),
        pytest.param(bearer("not-a-jwt"), id="garbage"),
        pytest.param(
            bearer(Tokens("another-secret-0123456789abcdef-0123").patient()), id="other-secret"
        ),
        pytest.param(bearer(Tokens(peers.JWT_SECRET).patient(ttl_s=-60)), id="expired"),
        pytest.param(bearer(wrong_audience_token()), id="wrong-audience"),
    ],
)
def test_a_bad_token_gets_401_and_the_connection_closed(
    http: httpx.Client, headers: dict[str, str]
) -> None:
    response = http.get(PATH, headers=headers)
    assert response.status_code == 401
    assert response.headers["connection"] == "close"
    assert response.content == b""


def test_a_good_token_gets_an_sse_stream_that_starts_with_retry(
    http: httpx.Client, floor: peers.Peer
) -> None:
    token = Tokens(peers.JWT_SECRET).patient("pt_7")
    with http.stream("GET", PATH, headers=bearer(token)) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        assert response.headers["cache-control"] == "no-cache"
        body = b""
        # Each read waits at most the client's 5 s timeout (httpx.ReadTimeout).
        for chunk in response.iter_raw():
            body += chunk
            if b"\n\n" in body:
                break
        assert body.startswith(b"retry: 3000\n\n")
    assert floor.alive()  # the stream held, then the client left: the floor serves on
