"""A token issuer for the docker token auth flow, for tests.

The registry (``auth.token``) answers unauthenticated requests with a
``Bearer realm=...,service=...,scope=...`` challenge; clients ask the realm
for a token: ``GET /token?service=&scope=`` with HTTP basic credentials,
or ``POST /token`` with an OAuth2 ``refresh_token`` grant (an identity
token). The answer is a JWT signed RS256 by a key whose certificate (sent
in the ``x5c`` header) chains to a CA the registry trusts.

Anonymous requests get a token granting nothing, as Docker Hub's token
service does for private repositories, so the registry refuses it.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

ISSUER = "crishim-test-issuer"
SERVICE = "crishim-test-registry"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def sign_jwt(claims: dict[str, Any], key: rsa.RSAPrivateKey, cert: x509.Certificate) -> str:
    """A compact RS256 JWT whose ``x5c`` header carries the signing certificate."""
    header = {
        "typ": "JWT",
        "alg": "RS256",
        "x5c": [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()],
    }
    signing_input = (
        _b64url(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + _b64url(json.dumps(claims, separators=(",", ":")).encode())
    )
    signature = key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
    return signing_input + "." + _b64url(signature)


@dataclass
class TokenRequest:
    """What the issuer saw (never the secrets themselves)."""

    method: str
    service: str
    scopes: list[str]
    #: "basic:<user>", "refresh_token:<user>", "anonymous", or "refused"
    credential: str


@dataclass
class TokenIssuer:
    key: rsa.RSAPrivateKey
    cert: x509.Certificate
    #: username -> password
    users: dict[str, str] = field(default_factory=dict)
    #: identity (refresh) token -> username
    refresh_tokens: dict[str, str] = field(default_factory=dict)
    service: str = SERVICE
    issuer: str = ISSUER
    requests: list[TokenRequest] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def realm(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/token"

    def issue(self, user: str, scopes: list[str]) -> str:
        """A signed token granting ``user`` the actions ``scopes`` ask for."""
        access = []
        if user:
            for scope in scopes:
                kind, _, rest = scope.partition(":")
                name, _, actions = rest.rpartition(":")
                if kind == "repository" and name:
                    access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": user,
            "aud": self.service,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        return sign_jwt(claims, self.key, self.cert)

    def _record(self, request: TokenRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def start(self) -> TokenIssuer:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _refuse(self, method: str, service: str, scopes: list[str]) -> None:
                issuer._record(TokenRequest(method, service, scopes, "refused"))
                self._answer(401, {"errors": [{"code": "UNAUTHORIZED", "message": "refused"}]})

            def _grant(
                self, method: str, service: str, scopes: list[str], user: str, how: str
            ) -> None:
                issuer._record(TokenRequest(method, service, scopes, how))
                token = issuer.issue(user, scopes)
                self._answer(200, {"token": token, "access_token": token, "expires_in": 300})

            def do_GET(self) -> None:
                query = parse_qs(urlsplit(self.path).query)
                service = query.get("service", [""])[0]
                scopes = query.get("scope", [])
                header = self.headers.get("Authorization", "")
                if not header:
                    self._grant("GET", service, scopes, "", "anonymous")
                    return
                scheme, _, value = header.partition(" ")
                try:
                    user, _, password = base64.b64decode(value).decode().partition(":")
                except (binascii.Error, UnicodeDecodeError):
                    self._refuse("GET", service, scopes)
                    return
                if scheme.lower() != "basic" or issuer.users.get(user) != password:
                    self._refuse("GET", service, scopes)
                    return
                self._grant("GET", service, scopes, user, f"basic:{user}")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = parse_qs(self.rfile.read(length).decode())
                service = form.get("service", [""])[0]
                scopes = form.get("scope", [])
                if form.get("grant_type", [""])[0] != "refresh_token":
                    self._refuse("POST", service, scopes)
                    return
                user = issuer.refresh_tokens.get(form.get("refresh_token", [""])[0])
                if user is None:
                    self._refuse("POST", service, scopes)
                    return
                self._grant("POST", service, scopes, user, f"refresh_token:{user}")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
