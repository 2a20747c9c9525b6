"""A local identity provider for tests: signing keys, and a JWKS endpoint (a real
HTTP server in a thread) whose key set can be rotated and which can fail or stall;
plus an OAuth 2.0 token endpoint (`POST /token`, client-credentials grant, client
id and secret in HTTP Basic) that issues service tokens signed with its key."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

AUDIENCE = "notify"
ISSUER = "notify-dev"


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

    @classmethod
    def rsa(cls, kid: str) -> SigningKey:
        return cls(kid, "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))

    @classmethod
    def ec(cls, kid: str) -> SigningKey:
        return cls(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))

    def jwk(self, *, pin_alg: bool = True) -> dict[str, Any]:
        public = self.private.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            data: dict[str, Any] = RSAAlgorithm.to_jwk(public, as_dict=True)
        else:
            data = ECAlgorithm.to_jwk(public, as_dict=True)
        data.update(kid=self.kid, use="sig")
        if pin_alg:
            data["alg"] = self.alg
        return data

    def token(
        self, sub: str = "pt_1", *, kid: str | None = "own", ttl_s: int = 600, **claims: Any
    ) -> str:
        now = int(time.time())
        payload: dict[str, Any] = {
            "sub": sub,
            "aud": AUDIENCE,
            "iss": ISSUER,
            "iat": now,
            "exp": now + ttl_s,
            "jti": uuid.uuid4().hex,
            **claims,
        }
        headers = {} if kid is None else {"kid": self.kid if kid == "own" else kid}
        return jwt.encode(payload, self.private, algorithm=self.alg, headers=headers)


Mode = Literal["ok", "error", "stall"]


@dataclass(frozen=True)
class OAuthClient:
    """A confidential client registered with the identity provider: a backend."""

    secret: str
    # The scopes it may be granted; the token carries those it asked for.
    scopes: frozenset[str]
    # Fixed claims added to its tokens (an identity provider's claim mapper).
    claims: dict[str, Any] = field(default_factory=dict)


@dataclass
class JwksServer:
    """Serves `document` at `/.well-known/jwks.json` until stopped."""

    keys: list[dict[str, Any]] = field(default_factory=list)
    mode: Mode = "ok"
    # How long a "stall" answer takes.
    stall_s: float = 0.8
    fetches: int = 0
    # The token endpoint: its signing key and clients (client id → client).
    signing_key: SigningKey | None = None
    clients: dict[str, OAuthClient] = field(default_factory=dict)
    token_ttl_s: int = 300
    issued: list[str] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/.well-known/jwks.json"

    @property
    def token_url(self) -> str:
        return self.url.replace("/.well-known/jwks.json", "/token")

    def grant(self, authorization: str | None, form: dict[str, list[str]]) -> tuple[int, Any]:
        """RFC 6749 4.4: the client-credentials grant, client authenticated by Basic."""
        scheme, _, encoded = (authorization or "").partition(" ")
        try:
            client_id, _, secret = base64.b64decode(encoded).decode().partition(":")
        except ValueError:  # not base64, not UTF-8
            return 401, {"error": "invalid_client"}
        client = self.clients.get(client_id)
        if scheme != "Basic" or client is None or client.secret != secret:
            return 401, {"error": "invalid_client"}
        if form.get("grant_type") != ["client_credentials"]:
            return 400, {"error": "unsupported_grant_type"}
        asked = set(" ".join(form.get("scope", [])).split()) or set(client.scopes)
        if not asked <= client.scopes or self.signing_key is None:
            return 400, {"error": "invalid_scope"}
        token = self.signing_key.token(
            client_id, ttl_s=self.token_ttl_s, scope=" ".join(sorted(asked)), **client.claims
        )
        self.issued.append(token)
        return 200, {"access_token": token, "token_type": "Bearer", "expires_in": self.token_ttl_s}

    def publish(self, *keys: SigningKey) -> None:
        self.keys = [k.jwk() for k in keys]

    def start(self) -> None:
        jwks = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                jwks.fetches += 1
                if jwks.mode == "error":
                    self.send_error(503)
                    return
                if jwks.mode == "stall":
                    time.sleep(jwks.stall_s)
                body = json.dumps({"keys": jwks.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                if self.path != "/token":
                    self.send_error(404)
                    return
                length = int(self.headers.get("Content-Length", "0"))
                form = parse_qs(self.rfile.read(length).decode())
                status, answer = jwks.grant(self.headers.get("Authorization"), form)
                body = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", "no-store")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
