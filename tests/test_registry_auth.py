"""Registry auth and TLS: htpasswd basic auth, the token flow with a token
issuer the tests start, and a registry that serves TLS with a test CA and
wants client certificates. Credentials must never leak."""

from __future__ import annotations

import base64
import logging
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from registry.helpers import (
    BASIC_PASSWORD,
    BASIC_USER,
    cache_config,
    cache_options,
    check_store,
    plain_endpoint,
    pull,
    pull_error,
)
from registry.images import RegistryImages
from registry.pki import Pki
from registry.process import RegistryProcess, TlsFiles, TokenAuth
from registry.proxy import TamperingProxy
from registry.tokens import TokenIssuer

from crishim.config import ConfigError
from crishim.cri.runtime.v1 import api_pb2
from crishim.testing.server import RunningShim

pytest_plugins = ["registry.fixtures"]

Server = Callable[..., RunningShim]
USER = BASIC_USER
PASSWORD = BASIC_PASSWORD
IDENTITY_TOKEN = "identity-token-of-alice-7f3a"
SECRETS = (PASSWORD, IDENTITY_TOKEN, base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode())


def _auth(**fields: str) -> api_pb2.AuthConfig:
    return api_pb2.AuthConfig(**fields)


def _no_secrets_in(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text


def _no_secrets_under(*roots: Path) -> None:
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                for secret in SECRETS:
                    assert secret.encode() not in data, path


# --------------------------------------------------------------------------- basic auth


def _basic_shim(
    crishim_server: Server, store: Path, registry: RegistryProcess, **registry_options: Any
) -> RunningShim:
    options = {"endpoints": [plain_endpoint(registry.url)], **registry_options}
    return crishim_server(cache_config(store, {registry.host: options}))


def test_basic_auth_without_credentials_is_unauthenticated(
    crishim_server: Server, store: Path, basic_registry: RegistryProcess
) -> None:
    shim = _basic_shim(crishim_server, store, basic_registry)
    ref = f"{basic_registry.host}/test/small:1"
    err = pull_error(shim, ref)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert ref in err.details()
    assert "wants credentials" in err.details()


@pytest.mark.parametrize(
    "auth",
    [
        {"username": USER, "password": "wrong"},
        {"auth": base64.b64encode(f"{USER}:wrong".encode()).decode()},
        {"username": "mallory", "password": PASSWORD},
    ],
    ids=["password", "auth-field", "user"],
)
def test_basic_auth_wrong_credentials_are_refused(
    crishim_server: Server,
    store: Path,
    basic_registry: RegistryProcess,
    caplog: pytest.LogCaptureFixture,
    auth: dict[str, str],
) -> None:
    caplog.set_level(logging.DEBUG)
    shim = _basic_shim(crishim_server, store, basic_registry)
    err = pull_error(shim, f"{basic_registry.host}/test/small:1", auth=_auth(**auth))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "refused the credentials" in err.details()
    _no_secrets_in(err.details(), caplog.text)
    assert "wrong" not in err.details()


@pytest.mark.parametrize(
    "auth",
    [
        {"username": USER, "password": PASSWORD},
        {"auth": base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()},
        {"username": USER, "password": PASSWORD, "server_address": "REGISTRY"},
    ],
    ids=["username-password", "auth-field", "server-address"],
)
def test_basic_auth_with_request_credentials(
    crishim_server: Server,
    store: Path,
    tmp_path: Path,
    basic_registry: RegistryProcess,
    images: RegistryImages,
    caplog: pytest.LogCaptureFixture,
    auth: dict[str, str],
) -> None:
    caplog.set_level(logging.DEBUG)
    fields = {k: v.replace("REGISTRY", basic_registry.host) for k, v in auth.items()}
    shim = _basic_shim(crishim_server, store, basic_registry)
    ref = f"{basic_registry.host}/test/small:1"
    assert pull(shim, ref, auth=_auth(**fields)).image_ref == images.small.id
    check_store(store)
    _no_secrets_in(caplog.text)
    _no_secrets_under(store)


def test_request_credentials_for_another_registry_are_not_sent(
    crishim_server: Server, store: Path, basic_registry: RegistryProcess
) -> None:
    shim = _basic_shim(crishim_server, store, basic_registry)
    auth = _auth(username=USER, password=PASSWORD, server_address="https://other.example.com/v1/")
    err = pull_error(shim, f"{basic_registry.host}/test/small:1", auth=auth)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED


def test_malformed_auth_field_is_unauthenticated(
    crishim_server: Server, store: Path, basic_registry: RegistryProcess
) -> None:
    shim = _basic_shim(crishim_server, store, basic_registry)
    err = pull_error(shim, f"{basic_registry.host}/test/small:1", auth=_auth(auth="%%%"))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "base64" in err.details()


@pytest.mark.parametrize("form", ["password", "password_file", "password_env"])
def test_configured_credentials_are_the_fallback(
    crishim_server: Server,
    store: Path,
    tmp_path: Path,
    basic_registry: RegistryProcess,
    images: RegistryImages,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    form: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    secret_file = tmp_path / "secret" / "password"
    secret_file.parent.mkdir()
    secret_file.write_text(PASSWORD + "\n")
    monkeypatch.setenv("CRISHIM_TEST_REGISTRY_PASSWORD", PASSWORD)
    value = {
        "password": PASSWORD,
        "password_file": str(secret_file),
        "password_env": "CRISHIM_TEST_REGISTRY_PASSWORD",
    }[form]
    shim = _basic_shim(
        crishim_server, store, basic_registry, credentials={"username": USER, form: value}
    )
    assert pull(shim, f"{basic_registry.host}/test/small:1").image_ref == images.small.id
    # the request's credentials win over the configured ones
    err = pull_error(
        shim,
        f"{basic_registry.host}/test/docker:1",
        auth=_auth(username=USER, password="wrong"),
    )
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "the pull request" in err.details()
    _no_secrets_in(caplog.text, err.details())
    _no_secrets_under(store)


# --------------------------------------------------------------------------- token auth


@pytest.fixture(scope="module")
def issuer(pki: Pki) -> Iterator[TokenIssuer]:
    issuer = TokenIssuer(
        pki.signing_key,
        pki.signing_cert,
        users={USER: PASSWORD},
        refresh_tokens={IDENTITY_TOKEN: USER},
    ).start()
    try:
        yield issuer
    finally:
        issuer.stop()


@pytest.fixture(scope="module")
def token_registry(
    registry: RegistryProcess,
    issuer: TokenIssuer,
    pki: Pki,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RegistryProcess]:
    """The session registry's storage behind token auth, trusting the issuer's CA."""
    token = TokenAuth(issuer.realm, issuer.service, issuer.issuer, pki.ca_cert)
    workdir = tmp_path_factory.mktemp("registry-token")
    with RegistryProcess(registry.storage, workdir, token=token) as process:
        yield process


@pytest.fixture
def token_shim(
    crishim_server: Server, store: Path, token_registry: RegistryProcess, issuer: TokenIssuer
) -> RunningShim:
    issuer.requests.clear()
    options = {"endpoints": [plain_endpoint(token_registry.url)]}
    return crishim_server(cache_config(store, {token_registry.host: options}))


def test_token_flow_anonymous_is_unauthenticated(
    token_shim: RunningShim, token_registry: RegistryProcess, issuer: TokenIssuer
) -> None:
    err = pull_error(token_shim, f"{token_registry.host}/test/small:1")
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    (request,) = issuer.requests
    assert request.credential == "anonymous"
    assert request.scopes == ["repository:test/small:pull"]
    assert request.service == issuer.service


def test_token_flow_with_username_and_password(
    token_shim: RunningShim,
    token_registry: RegistryProcess,
    issuer: TokenIssuer,
    images: RegistryImages,
    store: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    ref = f"{token_registry.host}/test/small:1"
    response = pull(token_shim, ref, auth=_auth(username=USER, password=PASSWORD))
    assert response.image_ref == images.small.id
    assert {r.credential for r in issuer.requests} == {f"basic:{USER}"}
    assert all(r.method == "GET" and r.service == issuer.service for r in issuer.requests)
    assert all(r.scopes == ["repository:test/small:pull"] for r in issuer.requests)
    check_store(store)
    _no_secrets_in(caplog.text)
    _no_secrets_under(store)


def test_token_flow_with_identity_token(
    token_shim: RunningShim,
    token_registry: RegistryProcess,
    issuer: TokenIssuer,
    images: RegistryImages,
) -> None:
    ref = f"{token_registry.host}/test/multi:1"
    response = pull(token_shim, ref, auth=_auth(identity_token=IDENTITY_TOKEN))
    assert response.image_ref == images.multi_arm64.id
    assert issuer.requests
    assert {(r.method, r.credential) for r in issuer.requests} == {
        ("POST", f"refresh_token:{USER}")
    }


def test_token_flow_with_registry_token(
    token_shim: RunningShim,
    token_registry: RegistryProcess,
    issuer: TokenIssuer,
    images: RegistryImages,
) -> None:
    token = issuer.issue(USER, ["repository:test/docker:pull"])
    ref = f"{token_registry.host}/test/docker:1"
    assert pull(token_shim, ref, auth=_auth(registry_token=token)).image_ref == images.docker.id
    assert issuer.requests == [], "a registry token is used as it is"
    # a token for another repository is refused, and not repeated in the error
    err = pull_error(
        token_shim, f"{token_registry.host}/test/small:1", auth=_auth(registry_token=token)
    )
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert token not in err.details()


@pytest.mark.parametrize(
    "auth",
    [{"username": USER, "password": "wrong"}, {"identity_token": "not-a-known-token"}],
    ids=["password", "identity-token"],
)
def test_token_flow_wrong_credentials_are_refused(
    token_shim: RunningShim,
    token_registry: RegistryProcess,
    caplog: pytest.LogCaptureFixture,
    auth: dict[str, str],
) -> None:
    caplog.set_level(logging.DEBUG)
    err = pull_error(token_shim, f"{token_registry.host}/test/small:1", auth=_auth(**auth))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "token service" in err.details()
    assert "not-a-known-token" not in err.details() + caplog.text
    _no_secrets_in(err.details(), caplog.text)


# --------------------------------------------------------------------------- TLS


class _Storage:
    """Blob storage on an origin of its own: serves the layout's blobs, records headers."""

    def __init__(self, layout: Path) -> None:
        storage = self
        self.headers: list[dict[str, str]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                storage.headers.append({k.lower(): v for k, v in self.headers.items()})
                hexdigest = self.path.split("?", 1)[0].rsplit("/", 1)[1]
                data = (layout / "blobs" / "sha256" / hexdigest).read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def test_a_redirect_to_another_origin_drops_the_authorization(
    crishim_server: Server,
    store: Path,
    token_registry: RegistryProcess,
    issuer: TokenIssuer,
    images: RegistryImages,
) -> None:
    """A blob redirected to storage elsewhere is fetched without the registry's token;
    the token is asked for once and reused for every request of the pull."""
    storage = _Storage(images.layout)
    front = TamperingProxy(token_registry.port).start()
    try:
        layer = images.small.layers[0]
        location = f"{storage.url}/bucket/{layer.digest.partition(':')[2]}?X-Signature=abc"
        front.override[f"blobs/{layer.digest}"] = (307, {"Location": location}, b"")
        issuer.requests.clear()
        options = {"endpoints": [plain_endpoint(front.url)]}
        shim = crishim_server(cache_config(store, {front.host: options}))
        auth = _auth(username=USER, password=PASSWORD)
        assert pull(shim, f"{front.host}/test/small:1", auth=auth).image_ref == images.small.id
    finally:
        front.stop()
        storage.stop()
    (headers,) = storage.headers
    assert "authorization" not in headers
    assert len(issuer.requests) == 1
    check_store(store)


@pytest.fixture(scope="module")
def tls_registry(
    registry: RegistryProcess, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RegistryProcess]:
    """The session registry's storage over TLS (test CA), wanting client certificates."""
    tls = TlsFiles(pki.server_cert, pki.server_key, client_cas=[pki.ca_cert])
    workdir = tmp_path_factory.mktemp("registry-tls")
    with RegistryProcess(registry.storage, workdir, tls=tls) as process:
        yield process


def _tls_shim(
    crishim_server: Server, store: Path, tls_registry: RegistryProcess, **endpoint: Any
) -> RunningShim:
    options = {"endpoints": [{"url": tls_registry.url, **endpoint}]}
    return crishim_server(cache_config(store, {tls_registry.host: options}))


def test_tls_with_the_test_ca_and_a_client_certificate(
    crishim_server: Server,
    store: Path,
    tls_registry: RegistryProcess,
    pki: Pki,
    images: RegistryImages,
) -> None:
    shim = _tls_shim(
        crishim_server,
        store,
        tls_registry,
        ca_file=str(pki.ca_cert),
        client_cert=str(pki.client_cert),
        client_key=str(pki.client_key),
    )
    assert tls_registry.url.startswith("https://")
    assert pull(shim, f"{tls_registry.host}/test/small:1").image_ref == images.small.id
    check_store(store)


def test_tls_without_the_ca_is_refused(
    crishim_server: Server, store: Path, tls_registry: RegistryProcess, pki: Pki
) -> None:
    shim = _tls_shim(
        crishim_server,
        store,
        tls_registry,
        client_cert=str(pki.client_cert),
        client_key=str(pki.client_key),
    )
    err = pull_error(shim, f"{tls_registry.host}/test/small:1")
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert "TLS" in err.details() and "certificate" in err.details().lower()


@pytest.mark.parametrize("client", ["none", "stranger"])
def test_tls_without_an_accepted_client_certificate_fails(
    crishim_server: Server, store: Path, tls_registry: RegistryProcess, pki: Pki, client: str
) -> None:
    endpoint: dict[str, str] = {"ca_file": str(pki.ca_cert)}
    if client == "stranger":
        endpoint.update(client_cert=str(pki.stranger_cert), client_key=str(pki.stranger_key))
    shim = _tls_shim(crishim_server, store, tls_registry, **endpoint)
    err = pull_error(shim, f"{tls_registry.host}/test/small:1")
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert f"{tls_registry.host}/test/small:1" in err.details()


def test_tls_skip_verify_is_an_explicit_opt_in(
    crishim_server: Server,
    store: Path,
    tls_registry: RegistryProcess,
    pki: Pki,
    images: RegistryImages,
) -> None:
    shim = _tls_shim(
        crishim_server,
        store,
        tls_registry,
        skip_verify=True,
        client_cert=str(pki.client_cert),
        client_key=str(pki.client_key),
    )
    assert pull(shim, f"{tls_registry.host}/test/docker:1").image_ref == images.docker.id


def test_missing_ca_file_stops_start_up(
    crishim_server: Server, store: Path, tls_registry: RegistryProcess, tmp_path: Path
) -> None:
    # a config error, found before anything starts, naming the key and the file
    with pytest.raises(
        ConfigError, match=r"endpoints\[0\]\.ca_file: .*missing\.pem does not exist"
    ):
        _tls_shim(crishim_server, store, tls_registry, ca_file=str(tmp_path / "missing.pem"))


@pytest.mark.parametrize(
    ("endpoint", "problem"),
    [
        ({"url": "http://127.0.0.1:5000"}, "plain_http: true"),
        ({"url": "https://127.0.0.1:5000", "plain_http": True}, "needs an http:// url"),
        ({"url": "https://user:pw@127.0.0.1:5000"}, "must not hold credentials"),
        ({"url": "https://127.0.0.1:5000/?token=x"}, "query"),
        # an existing file, so that the pairing, not the path, is the problem
        ({"url": "https://h", "client_cert": __file__}, "go together"),
        ({"url": "ftp://h"}, "not http or https"),
    ],
)
def test_endpoint_config_errors(
    crishim_server: Server, store: Path, endpoint: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ConfigError) as info:
        crishim_server(cache_config(store, {"example.com": {"endpoints": [endpoint]}}))
    assert "backends[0].options.registries" in str(info.value)
    assert problem in str(info.value)
    assert "pw" not in str(info.value).replace("pw@", "")


def test_credential_config_errors_do_not_show_secrets(crishim_server: Server, store: Path) -> None:
    config = cache_config(store, {"example.com": {"credentials": {"password": "hunter2-secret"}}})
    with pytest.raises(ConfigError) as info:
        crishim_server(config)
    assert "a password needs a username" in str(info.value)
    assert "hunter2-secret" not in str(info.value)


# --------------------------------------------------------------------------- spans


def test_spans_cover_the_pull_and_hold_no_secrets(
    basic_registry: RegistryProcess, images: RegistryImages, tmp_path: Path
) -> None:
    """The backend's own spans (OpenTelemetry API), with a recording provider."""
    from crishim_plugins.registry_cache import RegistryCacheBackend, RegistryCacheOptions
    from registry.helpers import platform
    from registry.spans import RecordingTracerProvider

    from crishim import reference
    from crishim.types import BackendContext, PullAuth, PullProgress, PullRequest

    provider = RecordingTracerProvider()
    context = BackendContext(
        name="cache", platform=platform(), config_dir=tmp_path, tracer_provider=provider
    )
    options = RegistryCacheOptions.model_validate(
        cache_options(
            tmp_path / "store",
            {basic_registry.host: {"endpoints": [plain_endpoint(basic_registry.url)]}},
        )
    )
    backend = RegistryCacheBackend(context, options)
    backend.start()
    events: list[PullProgress] = []
    try:
        ref = reference.parse(f"{basic_registry.host}/test/big:1")
        record = backend.pull_image(
            PullRequest(
                ref=ref, auth=PullAuth(username=USER, password=PASSWORD), progress=events.append
            )
        )
    finally:
        backend.close()
    assert record.id == images.big.id
    (root,) = provider.named("registry.pull")
    assert root.parent_id is None
    assert root.attributes["crishim.image.reference"] == str(ref)
    (resolve,) = provider.named("registry.resolve")
    assert resolve.parent_id == root.span_id
    assert resolve.attributes["oci.digest"] == images.big.manifest.digest
    fetches = {s.attributes["oci.digest"]: s for s in provider.named("registry.fetch_blob")}
    assert set(fetches) == images.blob_digests(images.big)
    for blob in (images.big.config, *images.big.layers):
        assert fetches[blob.digest].attributes["oci.size"] == blob.size
        assert fetches[blob.digest].parent_id == root.span_id  # across the download threads
    verified = {s.attributes["oci.digest"] for s in provider.named("registry.verify")}
    assert verified >= set(fetches) | {images.big.manifest.digest}
    (commit,) = provider.named("registry.commit")
    assert commit.attributes["oci.digest"] == images.big.manifest.digest
    assert all(s.ended for s in provider.spans)
    text = repr([(s.name, s.attributes, s.events) for s in provider.spans])
    _no_secrets_in(text)
    assert "Authorization" not in text and "Basic " not in text
    # progress: every blob ends "done" with its full size
    final = {e.digest: e for e in events}
    assert set(final) == set(fetches)
    assert all(e.state == "done" and e.done == e.total for e in final.values())
    layer = images.big.layers[0]
    assert any(e.digest == layer.digest and 0 < e.done < layer.size for e in events)
