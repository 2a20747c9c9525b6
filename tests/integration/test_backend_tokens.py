"""README "Tokens for backends": its example, run exactly as printed, gets a service
token from an identity provider's client-credentials grant (RS256, checked by the
service against the provider's JWKS) and publishes with `SyncHttpPublisher` an event
that a stream delivers; the token carries the claims the README's table names."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest

from tests.conftest import SettingsFactory, bearer
from tests.support.app_server import run_app
from tests.support.jwks_server import JwksServer, OAuthClient, SigningKey
from tests.support.sse import open_sse, opened

pytestmark = pytest.mark.own_topology

README = Path(__file__).resolve().parents[2] / "README.md"
MARKER = "<!-- the block below is run by tests/integration/test_backend_tokens.py -->\n```python\n"
SECRET = "s3cr3t-of-the-scheduling-backend"


def readme_example() -> str:
    return README.read_text(encoding="utf-8").split(MARKER, 1)[1].split("```", 1)[0]


@pytest.fixture
def identity_provider() -> Iterator[JwksServer]:
    key = SigningKey.rsa("idp-2026")
    idp = JwksServer(signing_key=key)
    idp.publish(key)
    idp.clients["svc_scheduling"] = OAuthClient(
        secret=SECRET,
        scopes=frozenset({"events:publish"}),
        claims={"role": "service"},  # the provider's fixed-claim mapper
    )
    idp.start()
    yield idp
    idp.stop()


async def run_example(notify_url: str, idp: JwksServer, secret: str) -> tuple[int, str]:
    """The README block in a fresh interpreter, configured as its comments say."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "NOTIFY_URL": notify_url,
        "IDP_TOKEN_URL": idp.token_url,
        "IDP_CLIENT_ID": "svc_scheduling",
        "IDP_CLIENT_SECRET": secret,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        readme_example(),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return await proc.wait(), out.decode()


async def test_the_readme_backend_example_publishes_with_an_idp_token(
    make_settings: SettingsFactory, identity_provider: JwksServer
) -> None:
    assert identity_provider.signing_key is not None
    settings = make_settings(jwt_algorithms=["RS256"], jwt_jwks_url=identity_provider.url)
    patient = bearer(identity_provider.signing_key.token("pt_8f3a"))
    async with (
        run_app(settings) as app,
        httpx.AsyncClient(base_url=app.base_url, timeout=10) as http,
        open_sse(http, "/v1/patients/me/events", headers=patient) as stream,
    ):
        await opened(stream)
        code, out = await run_example(app.base_url, identity_provider, SECRET)
        assert code == 0, out
        [event_id] = out.split()
        [frame] = await stream.wait_events(1)
        assert frame.id == event_id
        assert frame.json()["appointment_id"] == "ap_19c2"

        # The token is what the README's table says a service token holds.
        [token] = identity_provider.issued
        assert jwt.get_unverified_header(token)["alg"] == "RS256"
        claims = jwt.decode(token, options={"verify_signature": False})
        assert claims["sub"] == "svc_scheduling"
        assert claims["role"] == "service"
        assert claims["scope"].split() == ["events:publish"]
        assert (claims["aud"], claims["iss"]) == (settings.jwt_audience, settings.jwt_issuer)
        assert claims["exp"] > claims["iat"]

        # A wrong secret gets no token, so nothing is published.
        code, out = await run_example(app.base_url, identity_provider, "wrong")
        assert code != 0
        assert "401" in out
        assert len(identity_provider.issued) == 1
