"""The built-in ``cri`` backend: crishim in front of another CRI image service.

Everything goes through real unix sockets: a front crishim whose backend is
``cri`` forwards to an upstream crishim (see tests/cri_helpers.py), over an
oci-dir layout or a scriptable test backend.

* the CRI contract kit passes through the forwarding (removable, and
  read-only upstreams refuse removal with FAILED_PRECONDITION);
* an unreachable upstream is UNAVAILABLE naming the endpoint, for every
  call, while the server keeps serving; an upstream that starts later or
  restarts is used without restarting crishim;
* nothing is cached: changes upstream are seen at once, each ImageStatus is
  one upstream call;
* deadlines reach the upstream (a pull's, or ``pull_timeout``; lookups'
  ``call_timeout``) and a cancelled pull is cancelled upstream;
* the trace context reaches the upstream: its server span joins the front's
  trace under the front's span for the backend;
* pins from the upstream's store are kept; the embedded-filter does not
  hide forwarded images;
* a pull's auth and annotations reach the upstream, and no secret reaches
  crishim's log or an error message;
* upstream status codes map to crishim's, messages naming the endpoint;
* options are validated; a relative endpoint resolves against the config.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import grpc
import pytest
from conftest import rpc_error
from cri_helpers import (
    DANGLING_ID,
    FakeUpstream,
    cri_backend,
    endpoint_of,
    fake_backend,
    image_id_for,
    upstream_server,
    wait_for,
)
from crishim_plugins.cri import CriBackend, CriOptions
from grpc_health.v1 import health_pb2
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from test_conformance import EMBEDDED, standard_setup

from crishim.config import ConfigError, load_settings
from crishim.container import make_application
from crishim.cri.runtime.v1 import api_pb2
from crishim.telemetry import attributes as tracing
from crishim.testing.conformance import ContractSetup, CriContract
from crishim.testing.server import RunningShim, running_server
from crishim.types import PullAuth, PullRequest

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


@pytest.fixture(autouse=True)
def _fresh_fakes() -> Iterator[None]:
    FakeUpstream.instances.clear()
    yield
    FakeUpstream.instances.clear()


def pull(shim: RunningShim, ref: str, **kwargs: Any) -> api_pb2.PullImageResponse:
    request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref))
    kwargs.setdefault("timeout", 30)
    response: api_pb2.PullImageResponse = shim.images.PullImage(request, **kwargs)
    return response


def stream(shim: RunningShim) -> list[api_pb2.Image]:
    responses = shim.images.StreamImages(api_pb2.StreamImagesRequest(), timeout=30)
    return [image for response in responses for image in response.images]


# --------------------------------------------------------------------------- (a) the CRI contract


class ForwardedContract(CriContract):
    """The kit against a front crishim whose only backend is ``cri``.

    The upstream is a crishim over the standard layout (oci-dir) plus an
    embedded image its default filter hides, so the front must never see it.
    """

    #: oci-dir options of the upstream's layout.
    upstream_options: ClassVar[dict[str, Any]] = {}

    def cri_setup(self, root: Path) -> ContractSetup:
        inner = standard_setup(root / "upstream-layout", **self.upstream_options)
        config = {**dict(inner.config), "backends": [dict(b) for b in inner.backends]}
        self._upstream = contextlib.ExitStack()
        upstream = self._upstream.enter_context(running_server(config))
        return ContractSetup(
            backends=[cri_backend(upstream.socket_path)],
            images=inner.images,
            hidden=inner.hidden,
        )

    def cri_teardown(self, setup: ContractSetup) -> None:
        self._upstream.close()


class TestCriForwarding(ForwardedContract):
    removable = True


class TestCriForwardingReadOnlyUpstream(ForwardedContract):
    """The upstream refuses removal (FAILED_PRECONDITION); the front passes the refusal on."""

    removable = False
    upstream_options: ClassVar[dict[str, Any]] = {"read_only": True}


# --------------------------------------------------------------------------- (b) unreachable


def _every_call(shim: RunningShim) -> dict[str, Any]:
    images = shim.images
    spec = api_pb2.ImageSpec(image="example.com/app:1")
    return {
        "ImageStatus": lambda: shim.status("example.com/app:1"),
        "ImageStatus by ID": lambda: shim.status(image_id_for("x")),
        "ListImages": lambda: shim.list(),
        "StreamImages": lambda: stream(shim),
        "PullImage": lambda: images.PullImage(api_pb2.PullImageRequest(image=spec), timeout=10),
        "RemoveImage": lambda: shim.remove("example.com/app:1"),
        "ImageFsInfo": lambda: shim.fsinfo(),
    }


def _serving(shim: RunningShim) -> bool:
    answer = shim.health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


def test_an_unreachable_upstream_is_unavailable_naming_the_endpoint(
    sockdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="crishim_plugins.cri")
    endpoint = f"unix://{sockdir}/nobody.sock"
    started = time.monotonic()
    with running_server({"backends": [cri_backend(endpoint, connect_timeout=0.3)]}) as front:
        assert time.monotonic() - started < 5, "start-up waits connect_timeout, not longer"
        assert any("is not reachable" in r.getMessage() for r in caplog.records)
        for _ in range(2):  # and again: the server keeps serving, calls keep failing fast
            for name, call in _every_call(front).items():
                began = time.monotonic()
                err = rpc_error(call)
                assert err.code() == UNAVAILABLE, (name, err.code(), err.details())
                assert f"cri backend up: upstream {endpoint} is unreachable" in err.details(), name
                assert time.monotonic() - began < 3, f"{name} did not fail fast"
            assert _serving(front)


def test_an_upstream_that_starts_later_or_restarts_is_used_without_restarting_crishim(
    sockdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The endpoint is a symlink to the upstream's socket, made when the upstream is up."""
    caplog.set_level(logging.INFO, logger="crishim_plugins.cri")
    link = sockdir / "up.sock"
    name = "example.com/late:1"
    with running_server({"backends": [cri_backend(link, connect_timeout=0)]}) as front:
        assert rpc_error(front.status, name).code() == UNAVAILABLE
        for generation in range(2):  # starts late, then is restarted
            with upstream_server(fake_backend(images=[(name, "7")])) as (upstream, _):
                link.symlink_to(upstream.socket_path)
                assert wait_for(lambda: _answers(front, name), timeout=5), generation
                assert front.status(name).image.uid.value == 7
            link.unlink()
            assert wait_for(lambda: _unavailable(front, name), timeout=5), generation
        assert _serving(front)

    def count(text: str) -> int:
        return sum(text in r.getMessage() for r in caplog.records)

    # each loss and each return is logged once
    assert wait_for(lambda: count("lost upstream") == 2 and count("is reachable") == 2)


def _answers(shim: RunningShim, ref: str) -> bool:
    try:
        return shim.status(ref).HasField("image")
    except grpc.RpcError:
        return False


def _unavailable(shim: RunningShim, ref: str) -> bool:
    try:
        shim.status(ref)
    except grpc.RpcError as exc:
        return bool(exc.code() == UNAVAILABLE)
    return False


def test_a_relative_endpoint_is_relative_to_the_config_file(sockdir: Path) -> None:
    name = "example.com/app:1"
    with upstream_server(fake_backend(images=[(name, "")])) as (upstream, _):
        (sockdir / "up.sock").symlink_to(upstream.socket_path)
        config = {"backends": [cri_backend("unix://up.sock")]}
        with running_server(config, base_dir=sockdir) as front:
            image = front.status(name).image
            assert image.repo_tags == [name]
            info = json.loads(front.status(name, verbose=True).info["info"])
            assert info["source"] == f"unix://{sockdir}/up.sock"


# --------------------------------------------------------------------------- (c) no caching


def test_nothing_is_cached_changes_upstream_are_seen_at_once(tmp_path: Path) -> None:
    inner = standard_setup(tmp_path / "layout")
    backends = [dict(b) for b in inner.backends]
    with (
        upstream_server(*backends, fake_backend(), **dict(inner.config)) as (upstream, fake),
        running_server({"backends": [cri_backend(endpoint_of(upstream))]}) as front,
    ):
        assert fake is not None
        assert front.status("busybox").HasField("image")
        upstream.remove("busybox")  # removed upstream, behind crishim's back
        assert not front.status("busybox").HasField("image")
        assert "docker.io/library/busybox:latest" not in {
            t for i in front.list() for t in i.repo_tags
        }

        added = fake.add("example.com/new:1")  # added upstream
        assert front.status("example.com/new:1").image.id == added.id
        assert added.id in {i.id for i in front.list()}
        fake.drop(added.id)
        assert not front.status("example.com/new:1").HasField("image")
        assert not front.status(added.id).HasField("image")


def test_each_image_status_is_one_upstream_call() -> None:
    with (
        upstream_server(fake_backend(images=[("example.com/app:1", "")])) as (upstream, fake),
        running_server({"backends": [cri_backend(endpoint_of(upstream))]}) as front,
    ):
        assert fake is not None
        before = fake.lookups
        for _ in range(3):
            assert front.status("example.com/app:1").HasField("image")
        assert fake.lookups - before == 3


# --------------------------------------------------------------------------- (d) deadlines


def test_a_pull_reaches_the_upstream_with_the_callers_deadline_or_earlier(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    front_deadlines: list[float | None] = []
    forward = CriBackend.pull_image

    def spy(self: CriBackend, request: PullRequest) -> Any:
        front_deadlines.append(request.deadline)
        return forward(self, request)

    monkeypatch.setattr(CriBackend, "pull_image", spy)
    with (
        upstream_server(fake_backend(pull="hang")) as (upstream, fake),
        running_server({"backends": [cri_backend(endpoint_of(upstream))]}) as front,
    ):
        assert fake is not None
        client_deadline = time.monotonic() + 2.0
        err = rpc_error(pull, front, "example.com/slow:1", timeout=2.0)
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        (received,) = fake.pulls
        (front_deadline,) = front_deadlines
        assert received.deadline is not None and front_deadline is not None
        # no later than the deadline crishim was given: gRPC rounds a hop's
        # timeout up (10 ms steps at 2 s), so the backend takes a step off
        assert received.deadline <= front_deadline
        # which is the client's, give or take the client's own rounding up
        assert client_deadline - 1.0 <= received.deadline <= client_deadline + 0.011
        # the upstream call ends with the deadline: it does not run on
        assert wait_for(lambda: bool(fake.outcomes), timeout=3)
        assert fake.outcomes[0] in ("deadline", "cancelled")


def test_a_pull_without_a_deadline_gets_pull_timeout() -> None:
    with (
        upstream_server(fake_backend()) as (upstream, fake),
        running_server(
            {"backends": [cri_backend(endpoint_of(upstream), pull_timeout=40)]}
        ) as front,
    ):
        assert fake is not None
        started = time.monotonic()
        response = front.images.PullImage(
            api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image="example.com/app:2"))
        )
        assert response.image_ref == image_id_for("example.com/app:2")
        (received,) = fake.pulls
        assert received.deadline is not None
        assert 35 < received.deadline - started <= 40.15  # grpc rounds timeouts up


def test_a_call_without_a_deadline_reaches_the_backend_without_one() -> None:
    # grpcio reports "no deadline" as a huge time remaining; backends get None
    with upstream_server(fake_backend()) as (upstream, fake):
        assert fake is not None
        upstream.images.PullImage(
            api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image="example.com/app:3"))
        )
        (received,) = fake.pulls
        assert received.deadline is None


def test_a_cancelled_pull_is_cancelled_upstream() -> None:
    with (
        upstream_server(fake_backend(pull="hang")) as (upstream, fake),
        running_server({"backends": [cri_backend(endpoint_of(upstream))]}) as front,
    ):
        assert fake is not None
        request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image="example.com/app:1"))
        future = front.images.PullImage.future(request, timeout=60)
        assert fake.received.wait(5), "the pull did not reach the upstream"
        future.cancel()
        assert wait_for(lambda: bool(fake.outcomes), timeout=5), "the upstream pull ran on"
        assert fake.outcomes == ["cancelled"]


def test_a_hung_upstream_lookup_is_cut_off_at_call_timeout() -> None:
    with (
        upstream_server(fake_backend(slow_lookups=5)) as (upstream, _),
        running_server(
            {"backends": [cri_backend(endpoint_of(upstream), call_timeout=0.5)]}
        ) as front,
    ):
        began = time.monotonic()
        err = rpc_error(front.status, "example.com/slow:1")
        assert time.monotonic() - began < 3
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert endpoint_of(upstream) in err.details()
        assert "0.5s" in err.details()


# --------------------------------------------------------------------------- (e) trace context

TRACING = {"exporter": "otlp-grpc", "endpoint": "http://127.0.0.1:9"}
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


@contextlib.contextmanager
def _traced_pair() -> Iterator[
    tuple[RunningShim, InMemorySpanExporter, RunningShim, InMemorySpanExporter]
]:
    up_spans, front_spans = InMemorySpanExporter(), InMemorySpanExporter()
    with (
        upstream_server(
            fake_backend(images=[("example.com/app:1", "")]),
            overrides={"span_exporter": up_spans},
            tracing=TRACING,
        ) as (upstream, _),
        running_server(
            {"backends": [cri_backend(endpoint_of(upstream))], "tracing": TRACING},
            overrides={"span_exporter": front_spans},
        ) as front,
    ):
        yield front, front_spans, upstream, up_spans


def _finished(shim: RunningShim, exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    provider = shim.app.tracer_provider()
    assert provider is not None, "tracing is on"
    provider.force_flush()
    return list(exporter.get_finished_spans())


@pytest.mark.parametrize("caller_trace", [True, False], ids=["caller-traceparent", "new-trace"])
def test_the_upstreams_span_joins_the_front_trace(
    monkeypatch: pytest.MonkeyPatch, caller_trace: bool
) -> None:
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    metadata = [("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01")] if caller_trace else []
    with _traced_pair() as (front, front_spans, upstream, up_spans):
        request = api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image="example.com/app:1"))
        assert front.images.ImageStatus(request, timeout=10, metadata=metadata).HasField("image")
        front_done = _finished(front, front_spans)
        up_done = _finished(upstream, up_spans)
    (front_server,) = [s for s in front_done if s.kind is SpanKind.SERVER]
    (up_server,) = [s for s in up_done if s.kind is SpanKind.SERVER]
    trace_id = front_server.context.trace_id
    if caller_trace:
        assert f"{trace_id:032x}" == TRACE_ID
    assert up_server.context.trace_id == trace_id
    assert up_server.parent is not None and up_server.parent.is_remote
    (parent,) = [s for s in front_done if s.context.span_id == up_server.parent.span_id]
    attributes = dict(parent.attributes or {})
    assert attributes[tracing.ATTR_PLUGIN_NAME] == "up"
    assert attributes[tracing.ATTR_OPERATION] == "get_image"
    assert parent.parent is not None and parent.parent.span_id == front_server.context.span_id


# --------------------------------------------------------------------------- (f) pins and filters


def test_an_image_pinned_upstream_is_pinned_here() -> None:
    images = [("example.com/pinned:1", ""), ("example.com/free:1", "")]
    with (
        # pinned by the upstream's store (the fake's record) and by its config
        upstream_server(
            fake_backend(images=images, pinned=["example.com/pinned:1"]),
            pinned=["example.com/free:1"],
        ) as (upstream, _),
        running_server({"backends": [cri_backend(endpoint_of(upstream))]}) as front,
    ):
        assert front.status("example.com/pinned:1").image.pinned
        assert front.status("example.com/free:1").image.pinned
        assert all(image.pinned for image in front.list())
    with (
        upstream_server(fake_backend(images=images)) as (upstream, _),
        running_server({"backends": [cri_backend(endpoint_of(upstream))]}) as front,
    ):
        assert not any(image.pinned for image in front.list())


def test_the_strict_embedded_filter_does_not_hide_forwarded_images(tmp_path: Path) -> None:
    """A forwarded record has no config blob; the upstream vouches for it."""
    inner = standard_setup(tmp_path / "layout")
    config = {**dict(inner.config), "backends": [dict(b) for b in inner.backends]}
    strict = [{"name": "oci-only", "type": "embedded-filter", "options": {"require_config": True}}]
    with (
        running_server(config) as upstream,
        running_server(
            {"backends": [cri_backend(upstream.socket_path)], "filters": strict}
        ) as front,
    ):
        assert sorted(i.id for i in front.list()) == sorted(i.id for i in inner.images)
        for expected in inner.images:
            assert front.status(expected.id).HasField("image"), expected.id
        assert not front.status(EMBEDDED).HasField("image")


def test_fields_and_annotations_pass_through() -> None:
    with (
        upstream_server(
            fake_backend(images=[("example.com/app:1", "1000"), ("example.com/web:1", "nginx:42")])
        ) as (upstream, _),
        running_server({"backends": [cri_backend(endpoint_of(upstream))]}) as front,
    ):
        app = front.status("example.com/app:1").image
        assert (app.uid.value, app.username, app.size) == (1000, "", 1234)
        assert dict(app.spec.annotations) == {"org.example/from": "fake"}
        web = front.status("example.com/web:1").image
        assert not web.HasField("uid") and web.username == "nginx"
        assert [i.id for i in front.list("example.com/web:1")] == [web.id]
        # a short ID resolves through the upstream's list
        assert front.status(web.id.removeprefix("sha256:")[:12]).image.id == web.id


def test_a_crio_style_upstream_bare_hex_ids_and_placeholder_names() -> None:
    """CRI-O reports IDs as bare hex and untagged images as ``<none>:<none>``."""
    name = "example.com/app:1"
    with (
        upstream_server(fake_backend(images=[(name, "")], crio_style=True), filters=[]) as (
            upstream,
            fake,
        ),
        running_server({"backends": [cri_backend(endpoint_of(upstream))]}) as front,
    ):
        assert fake is not None
        image_id = image_id_for(name)
        assert upstream.status(name).image.id == image_id.removeprefix("sha256:")
        assert front.status(name).image.id == image_id
        assert front.status(image_id).image.repo_tags == [name]
        dangling = front.status(DANGLING_ID).image
        assert (dangling.id, list(dangling.repo_tags), list(dangling.repo_digests)) == (
            DANGLING_ID,
            [],
            [],
        )
        assert sorted(i.id for i in front.list()) == sorted([image_id, DANGLING_ID])
        front.remove(image_id)  # forwarded as the bare hex CRI-O knows
        assert not upstream.status(name).HasField("image")
        assert [i.id for i in front.list()] == [DANGLING_ID]


# --------------------------------------------------------------------------- (g) auth and secrets

AUTH = PullAuth(
    username="robot",
    password="pw-Zq81-secret",
    auth="cm9ib3Q6cHctWnE4MS1zZWNyZXQ=",
    server_address="registry.example.com",
    identity_token="idtok-7781-secret",
    registry_token="regtok-9912-secret",
)
SECRETS = (AUTH.password, AUTH.auth, AUTH.identity_token, AUTH.registry_token)


def _auth_request(ref: str) -> api_pb2.PullImageRequest:
    return api_pb2.PullImageRequest(
        image=api_pb2.ImageSpec(image=ref, annotations={"io.example/pod": "web-0"}),
        auth=api_pb2.AuthConfig(
            username=AUTH.username,
            password=AUTH.password,
            auth=AUTH.auth,
            server_address=AUTH.server_address,
            identity_token=AUTH.identity_token,
            registry_token=AUTH.registry_token,
        ),
    )


def _log_text(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(f"{r.getMessage()}\n{r.exc_text or ''}" for r in caplog.records)


def test_a_pull_forwards_auth_and_annotations_and_logs_no_secret(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    with (
        upstream_server(fake_backend()) as (upstream, fake),
        running_server({"backends": [cri_backend(endpoint_of(upstream))]}) as front,
    ):
        assert fake is not None
        response = front.images.PullImage(_auth_request("example.com/private:1"), timeout=30)
        assert response.image_ref == image_id_for("example.com/private:1")
        (received,) = fake.pulls
        assert received.auth == AUTH
        assert dict(received.annotations) == {"io.example/pod": "web-0"}
        assert str(received.ref) == "example.com/private:1"
        assert front.status("example.com/private:1").image.id == response.image_ref
    text = _log_text(caplog)
    assert "forwarding PullImage of example.com/private:1" in text, "debug logs were captured"
    for secret in SECRETS:
        assert secret not in text


def test_an_upstream_error_echoing_a_secret_is_redacted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    fake = fake_backend(pull="error", error="PermissionDenied", message="bad password {password}")
    with (
        upstream_server(fake) as (upstream, _),
        running_server({"backends": [cri_backend(endpoint_of(upstream))]}) as front,
    ):
        with pytest.raises(grpc.RpcError) as info:
            front.images.PullImage(_auth_request("example.com/private:1"), timeout=30)
        err = info.value
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "bad password <redacted>" in err.details()
        assert AUTH.password not in err.details()
    # the upstream's own message (its log) aside, crishim's front logs nothing secret
    front_text = "\n".join(
        f"{r.getMessage()}\n{r.exc_text or ''}"
        for r in caplog.records
        if r.name.startswith("crishim_plugins.cri")
    )
    assert AUTH.password not in front_text


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("error", "code"),
    [
        ("PermissionDenied", grpc.StatusCode.PERMISSION_DENIED),
        ("Unauthenticated", grpc.StatusCode.UNAUTHENTICATED),
        ("ImageNotFound", grpc.StatusCode.NOT_FOUND),
        ("InvalidRequest", grpc.StatusCode.INVALID_ARGUMENT),
        ("TooLarge", grpc.StatusCode.RESOURCE_EXHAUSTED),
        ("DataLoss", grpc.StatusCode.DATA_LOSS),
        ("NotSupported", grpc.StatusCode.FAILED_PRECONDITION),
        ("Unavailable", grpc.StatusCode.UNAVAILABLE),
        ("BackendError", grpc.StatusCode.INTERNAL),
    ],
)
def test_upstream_status_codes_map_to_crishims(error: str, code: grpc.StatusCode) -> None:
    with (
        upstream_server(fake_backend(pull="error", error=error)) as (upstream, _),
        running_server({"backends": [cri_backend(endpoint_of(upstream))]}) as front,
    ):
        err = rpc_error(pull, front, "example.com/app:1")
        assert err.code() == code, err.details()
        assert endpoint_of(upstream) in err.details()
        assert "the fake upstream refuses" in err.details()
        if code == UNAVAILABLE:  # the upstream answered: it says it is unavailable
            assert f"upstream {endpoint_of(upstream)} is unavailable" in err.details()
        assert "cri backend" in err.details() or "backend 'up'" in err.details()


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("endpoint", "reason"),
    [
        ("/var/run/crio/crio.sock", "must be a unix socket address"),
        ("tcp://127.0.0.1:1234", "must be a unix socket address"),
        ("unix://", "the socket path is missing"),
        ("unix:///run/", "names a directory"),
        ("unix:///" + "x" * 120, "unix sockets allow at most 107"),
    ],
)
def test_bad_endpoints_are_config_errors_naming_the_key(
    tmp_path: Path, endpoint: str, reason: str
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "backends:\n  - {name: up, type: cri, options: {endpoint: " + json.dumps(endpoint) + "}}\n"
    )
    with pytest.raises(ConfigError) as info:
        make_application(load_settings(path)).backends()
    problems = dict(info.value.problems)
    assert reason in problems["backends[0].options.endpoint"], problems


def test_option_defaults() -> None:
    options = CriOptions(endpoint="unix:///var/run/crio/crio.sock")
    assert (options.call_timeout, options.connect_timeout) == (10.0, 5.0)
    assert options.max_message_size == 16 * 1024 * 1024


ROOT = Path(__file__).resolve().parents[1]


def test_every_option_is_documented() -> None:
    guide = (ROOT / "docs/cri.md").read_text()
    reference_ = (ROOT / "docs/configuration.md").read_text()
    for option in CriOptions.model_fields:
        assert f"| `{option}` |" in guide, option
        assert f"| `options.{option}` |" in reference_, option


def test_the_documented_config_is_valid(tmp_path: Path) -> None:
    guide = (ROOT / "docs/cri.md").read_text()
    (config,) = [b for b in re.findall(r"```yaml\n(.*?)```", guide, re.DOTALL) if "backends:" in b]
    path = tmp_path / "crishim.yaml"
    path.write_text(config)
    (handle,) = make_application(load_settings(path)).backends()
    assert handle.type == "cri"
    assert isinstance(handle.backend, CriBackend)
    assert handle.backend.endpoint == "unix:///var/run/crio/crio.sock"
