"""Secrets: pull with credentials, then find them nowhere.

PullImage carries ``auth`` with distinctive values. Whatever backends are
installed handle the pull (oci-dir answers from its layout or says
FAILED_PRECONDITION; registry-cache, when installed, pulls from a fake
registry on 127.0.0.1 that asks for those credentials and hands out a
token). Then no span name, attribute, event or status message, no log
line (caplog at DEBUG, and the server's stderr when it runs as
``crishim serve``), no byte exported over OTLP and no error message the
client gets may contain any of them.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from crishim.cri.runtime.v1 import api_pb2, api_pb2_grpc
from crishim.manager import load_plugins
from crishim.testing.ocibuild import BuiltImage, LayoutBuilder
from crishim.testing.server import running_server
from tests.otlp_receivers import HttpReceiver, receiving
from tests.telemetry_support import DEMO as OCI_DIR
from tests.telemetry_support import serving

PRESENT = "example.com/crishim/web:1.0"
ABSENT = "example.com/crishim/absent:1.0"
PLATFORM = {"os": "linux", "architecture": "amd64"}

USERNAME = "u-5a8d1e77"
PASSWORD = "pw-0c4f9b2e1d7a"
IDENTITY_TOKEN = "idtok-93e1b0c55f2a"
REGISTRY_TOKEN = "regtok-6d2c8a4f0b19"
#: What the fake token service hands out: a secret too.
ISSUED_TOKEN = "issued-1f7e3c9a5b80"
AUTH_FIELD = base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()

#: Every string that must never appear (the username is not a secret by itself,
#: but crishim has no reason to repeat it either).
SECRETS = (USERNAME, PASSWORD, IDENTITY_TOKEN, REGISTRY_TOKEN, ISSUED_TOKEN, AUTH_FIELD)

#: How each registry-cache case authenticates: the PullImage auth fields it sets.
AUTH_MODES: dict[str, dict[str, str]] = {
    "password": {"username": USERNAME, "password": PASSWORD},
    "auth-field": {"auth": AUTH_FIELD},
    "identity-token": {"username": USERNAME, "identity_token": IDENTITY_TOKEN},
    "registry-token": {"registry_token": REGISTRY_TOKEN},
    # read from a file, a token ends in a newline: it is still the token
    "registry-token-newline": {"registry_token": REGISTRY_TOKEN + "\n"},
    "registry-token-space": {"registry_token": " " + REGISTRY_TOKEN + " "},
}
EVERYTHING = {
    "username": USERNAME,
    "password": PASSWORD,
    "auth": AUTH_FIELD,
    "identity_token": IDENTITY_TOKEN,
    "registry_token": REGISTRY_TOKEN,
}


pytestmark = pytest.mark.usefixtures("no_otel_env")


def _installed_types() -> set[str]:
    return set(load_plugins().backend_types())


def _require(backend_type: str) -> None:
    if backend_type not in _installed_types():
        pytest.skip(f"backend type {backend_type!r} is not installed")


# -- a registry that wants credentials -----------------------------------------------------------


@dataclass
class FakeRegistry:
    """Serves one image as ``<host>/team/app:1``; every call needs a bearer token.

    ``/token`` gives :data:`ISSUED_TOKEN` for Basic credentials
    (``USERNAME:PASSWORD``) or the refresh token :data:`IDENTITY_TOKEN`;
    :data:`REGISTRY_TOKEN` is accepted as a bearer token as it is. A 401
    answer echoes nothing of the request.
    """

    image: BuiltImage
    layout: Path
    authorizations: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def _send(
                self, code: int, body: bytes = b"", headers: dict[str, str] | None = None
            ) -> None:
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _token(self) -> None:
                length = int(self.headers.get("content-length", "0") or 0)
                form = self.rfile.read(length).decode() if length else ""
                auth = self.headers.get("authorization", "")
                basic = "Basic " + AUTH_FIELD
                if auth == basic or f"refresh_token={IDENTITY_TOKEN}" in form:
                    body = json.dumps({"token": ISSUED_TOKEN, "expires_in": 300}).encode()
                    return self._send(200, body, {"Content-Type": "application/json"})
                return self._send(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}')

            def do_POST(self) -> None:
                if self.path.startswith("/token"):
                    return self._token()
                return self._send(404)

            def do_GET(self) -> None:
                if self.path.startswith("/token"):
                    return self._token()
                auth = self.headers.get("authorization", "")
                registry.authorizations.append(auth)
                if auth not in (f"Bearer {ISSUED_TOKEN}", f"Bearer {REGISTRY_TOKEN}"):
                    challenge = (
                        f'Bearer realm="http://127.0.0.1:{registry.port}/token",'
                        'service="fake-registry"'
                    )
                    body = (
                        b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}'
                    )
                    return self._send(
                        401,
                        body,
                        {"WWW-Authenticate": challenge, "Content-Type": "application/json"},
                    )
                manifest = registry.image.manifest
                if self.path == "/v2/":
                    return self._send(200, b"{}")
                if self.path in (
                    "/v2/team/app/manifests/1",
                    f"/v2/team/app/manifests/{manifest.digest}",
                ):
                    data = registry.blob(manifest.digest)
                    return self._send(
                        200,
                        data,
                        {
                            "Content-Type": manifest.media_type,
                            "Docker-Content-Digest": manifest.digest,
                        },
                    )
                if self.path.startswith("/v2/team/app/blobs/sha256:"):
                    digest = self.path.rsplit("/", 1)[1]
                    path = registry.layout / "blobs" / "sha256" / digest.split(":", 1)[1]
                    if path.is_file():
                        return self._send(
                            200, path.read_bytes(), {"Content-Type": "application/octet-stream"}
                        )
                body = b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}'
                return self._send(404, body, {"Content-Type": "application/json"})

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def blob(self, digest: str) -> bytes:
        return (self.layout / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeRegistry]:
    root = tmp_path_factory.mktemp("registry") / "layout"
    builder = LayoutBuilder(root)
    image = builder.image(files={"app/secretless": "nothing to see\n"}, **PLATFORM)
    builder.tag(image, "team/app:1")
    builder.write()
    fake = FakeRegistry(image, root)
    yield fake
    fake.stop()


def _registry_backend(registry: FakeRegistry) -> dict[str, Any]:
    return {
        "name": "cache",
        "type": "registry-cache",
        "options": {
            "registries": {
                registry.host: {
                    "endpoints": [{"url": f"http://{registry.host}", "plain_http": True}]
                }
            }
        },
    }


# -- what must not hold secrets ------------------------------------------------------------------


def _span_texts(spans: tuple[ReadableSpan, ...] | list[ReadableSpan]) -> list[str]:
    texts = []
    for span in spans:
        texts.append(span.name)
        texts.extend(f"{k}={v}" for k, v in (span.attributes or {}).items())
        for event in span.events:
            texts.append(event.name)
            texts.extend(f"{k}={v}" for k, v in (event.attributes or {}).items())
        texts.append(span.status.description or "")
        texts.extend(f"{k}={v}" for k, v in span.resource.attributes.items())
    return texts


def _assert_clean(where: str, texts: list[str]) -> None:
    for secret in SECRETS:
        leaks = [t for t in texts if secret in t]
        assert not leaks, f"{where} holds a credential: {leaks[:3]}"


def _pull(stub: api_pb2_grpc.ImageServiceStub, ref: str, auth: dict[str, str]) -> tuple[str, str]:
    """(image_ref, "") or ("", the error's code and message)."""
    request = api_pb2.PullImageRequest(
        image=api_pb2.ImageSpec(image=ref),
        auth=api_pb2.AuthConfig(server_address=ref.split("/", 1)[0], **auth),
    )
    try:
        return stub.PullImage(request, timeout=60).image_ref, ""
    except grpc.RpcError as exc:
        return "", f"{exc.code().name}: {exc.details()}"


@dataclass(frozen=True)
class Case:
    backend: str
    #: (reference, auth fields, expected gRPC code name or "OK")
    pulls: tuple[tuple[str, dict[str, str], str], ...]


def _cases(registry: FakeRegistry | None, backend_type: str, mode: str) -> Case:
    if backend_type == "oci-dir":
        return Case(
            "oci-dir",
            ((PRESENT, EVERYTHING, "OK"), (ABSENT, EVERYTHING, "FAILED_PRECONDITION")),
        )
    assert registry is not None
    auth = AUTH_MODES[mode]
    wrong = {k: v[::-1] for k, v in auth.items()}  # refused: the message must not quote them
    return Case(
        "registry-cache",
        (
            (f"{registry.host}/team/app:1", auth, "OK"),
            (f"{registry.host}/team/app:missing", auth, "NOT_FOUND"),
            (f"{registry.host}/team/other:1", wrong, "ANY_ERROR"),
        ),
    )


CASES = [
    pytest.param("oci-dir", "-", id="oci-dir"),
    *(pytest.param("registry-cache", mode, id=f"registry-cache-{mode}") for mode in AUTH_MODES),
]


@pytest.mark.parametrize(("backend_type", "mode"), CASES)
def test_no_credential_in_spans_logs_or_errors(
    backend_type: str,
    mode: str,
    registry: FakeRegistry,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    _require(backend_type)
    case = _cases(registry, backend_type, mode)
    backend = OCI_DIR if backend_type == "oci-dir" else _registry_backend(registry)
    exporter = InMemorySpanExporter()
    config = {
        "backends": [backend],
        "platform": PLATFORM,
        "logging": {"level": "debug"},
        "tracing": {
            "exporter": "otlp-grpc",
            "endpoint": "http://127.0.0.1:9",
            "sampler": "always_on",
        },
    }
    caplog.set_level(logging.DEBUG)
    errors: list[str] = []
    registry.authorizations.clear()
    with running_server(config, overrides={"span_exporter": exporter}) as shim:
        for ref, auth, expected in case.pulls:
            image_ref, error = _pull(shim.images, ref, auth)
            if expected == "OK":
                assert image_ref.startswith("sha256:"), error
            elif expected == "ANY_ERROR":
                assert error, f"pulling {ref} with wrong credentials succeeded"
            else:
                assert error.startswith(expected), error
            errors.append(error)
        provider = shim.app.tracer_provider()
        assert provider is not None
        provider.force_flush()
        spans = exporter.get_finished_spans()

    pulls = [s for s in spans if s.name == "runtime.v1.ImageService/PullImage"]
    assert len(pulls) == len(case.pulls)
    if backend_type == "registry-cache":
        # the credentials really were used: the registry saw the token they bought
        assert any(a.startswith("Bearer ") for a in registry.authorizations)
        assert any(s.name == f"pull_image {backend['name']}" for s in spans)
    _assert_clean("a span", _span_texts(spans))
    _assert_clean("an error message", errors)
    log_lines = [r.getMessage() for r in caplog.records] + [caplog.text]
    _assert_clean("a log record", log_lines)


@pytest.mark.parametrize(
    "token",
    [REGISTRY_TOKEN + "\nX-Injected: 1", "ü" + REGISTRY_TOKEN, REGISTRY_TOKEN + "\x00", "a b"],
    ids=["inner-newline", "non-ascii", "nul", "inner-space"],
)
def test_an_unsendable_token_is_unauthenticated_and_never_repeated(
    token: str, registry: FakeRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    _require("registry-cache")
    exporter = InMemorySpanExporter()
    config = {
        "backends": [_registry_backend(registry)],
        "platform": PLATFORM,
        "logging": {"level": "debug"},
        "tracing": {"exporter": "otlp-grpc", "endpoint": "http://127.0.0.1:9"},
    }
    caplog.set_level(logging.DEBUG)
    registry.authorizations.clear()
    with running_server(config, overrides={"span_exporter": exporter}) as shim:
        _, error = _pull(shim.images, f"{registry.host}/team/app:1", {"registry_token": token})
        provider = shim.app.tracer_provider()
        assert provider is not None
        provider.force_flush()
        spans = exporter.get_finished_spans()
    # refused before any library saw it: not INTERNAL, and nothing was sent
    assert error.startswith("UNAUTHENTICATED: "), error
    assert "registry_token" in error
    assert not registry.authorizations
    _assert_clean("an error message", [error])
    _assert_clean("a span", _span_texts(spans))
    _assert_clean("a log record", [r.getMessage() for r in caplog.records] + [caplog.text])
    if token != "a b":
        assert token not in caplog.text and token not in error


@pytest.fixture
def http_receiver() -> Iterator[HttpReceiver]:
    for receiver in receiving("http"):
        assert isinstance(receiver, HttpReceiver)
        yield receiver


def test_serve_process_stderr_and_exported_bytes_hold_no_credential(
    tmp_path: Path, registry: FakeRegistry, http_receiver: HttpReceiver, sockdir: Path
) -> None:
    types = _installed_types()
    backends = [OCI_DIR]
    pulls = [(PRESENT, EVERYTHING), (ABSENT, EVERYTHING)]
    if "registry-cache" in types:
        backends.append(_registry_backend(registry))
        pulls = [
            (f"{registry.host}/team/app:1", AUTH_MODES["password"]),
            (f"{registry.host}/team/app:1", AUTH_MODES["identity-token"]),
            (f"{registry.host}/team/app:nope", AUTH_MODES["registry-token"]),
            (f"{registry.host}/team/x:1", {"username": USERNAME, "password": PASSWORD[::-1]}),
        ]
    sock = sockdir / "crishim.sock"
    config = tmp_path / "c.yaml"
    config.write_text(
        json.dumps(
            {
                "server": {"listen": f"unix://{sock}"},
                "state_dir": str(tmp_path / "state"),
                "platform": PLATFORM,
                "logging": {"level": "debug", "format": "json"},
                "backends": backends,
                "tracing": {
                    "exporter": "otlp-http",
                    "endpoint": http_receiver.endpoint,
                    "sampler": "always_on",
                },
                "metrics": {"exporter": "otlp-http", "endpoint": http_receiver.endpoint},
            }
        )
    )
    errors = []
    with serving(config, sock) as served, grpc.insecure_channel(f"unix:{sock}") as channel:
        stub = api_pb2_grpc.ImageServiceStub(channel)
        for ref, auth in pulls:
            errors.append(_pull(stub, ref, auth)[1])
    stdout, stderr = served.stdout, served.stderr
    assert len([s for s in http_receiver.spans() if s.name.endswith("/PullImage")]) == len(pulls)
    _assert_clean("the server's stderr", stderr.splitlines())
    _assert_clean("the server's stdout", stdout.splitlines())
    _assert_clean("an error message", errors)
    raw = http_receiver.raw_bytes()
    for secret in SECRETS:
        assert secret.encode() not in raw, "an exported span or metric holds a credential"
