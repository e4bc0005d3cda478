"""Traces, in memory: span trees, attributes, parents, the off switch.

Every test runs a real server (crishim.testing.server.running_server) with
the container's ``span_exporter`` replaced by an in-memory exporter (the
batch processor, sampler and interceptor are the production ones).
The setup from config and environment is tests/test_tracing_setup.py,
metrics tests/test_metrics.py, the OTLP encoder tests/test_tracing_otlp.py.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from crishim import __version__
from crishim.cri.runtime.v1 import api_pb2
from crishim.errors import Unavailable
from crishim.telemetry import attributes as names
from crishim.telemetry.attributes import safe_url
from crishim.telemetry.spans import PluginTelemetry
from crishim.testing.ocibuild import LayoutBuilder
from crishim.testing.server import RunningShim, running_server
from tests.telemetry_support import DEMO, HIT, STATUS, FailingPlugin, status

#: An exporter that is never reached: tests replace it with an in-memory one.
TRACING = {"exporter": "otlp-grpc", "endpoint": "http://127.0.0.1:9"}
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"

pytestmark = pytest.mark.usefixtures("no_otel_env")


# -- helpers -----------------------------------------------------------------------------------


@contextmanager
def traced(
    backends: list[dict[str, Any]] | None = None,
    tracing_config: Mapping[str, Any] = TRACING,
    **config: Any,
) -> Iterator[tuple[RunningShim, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    data = {"backends": backends or [DEMO], "tracing": dict(tracing_config), **config}
    with running_server(
        data,
        extra_plugins=[("failing", FailingPlugin())],
        overrides={"span_exporter": exporter},
    ) as shim:
        yield shim, exporter


def finished(shim: RunningShim, exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    provider = shim.app.tracer_provider()
    if provider is not None:
        provider.force_flush()
    return list(exporter.get_finished_spans())


def one_server_span(spans: list[ReadableSpan], name: str = STATUS) -> ReadableSpan:
    servers = [s for s in spans if s.kind is SpanKind.SERVER]
    assert [s.name for s in servers] == [name], [s.name for s in spans]
    return servers[0]


def children(
    spans: list[ReadableSpan], parent: ReadableSpan, kind: str | None = "backend"
) -> list[ReadableSpan]:
    """The child spans of ``parent``: the backend calls (filters, if configured, aside)."""
    return [
        s
        for s in spans
        if s.parent is not None
        and s.parent.span_id == parent.context.span_id
        and (kind is None or (s.attributes or {}).get(names.ATTR_PLUGIN_KIND) == kind)
    ]


def exception_events(span: ReadableSpan) -> list[dict[str, Any]]:
    return [dict(e.attributes or {}) for e in span.events if e.name == "exception"]


# -- span trees --------------------------------------------------------------------------------


def test_hit_server_span_with_one_child_per_plugin() -> None:
    with traced() as (shim, exporter):
        image_id = status(shim, HIT).image.id
        spans = finished(shim, exporter)
    server = one_server_span(spans)
    assert server.parent is None
    attrs = dict(server.attributes or {})
    assert attrs["rpc.system"] == "grpc"
    assert attrs["rpc.service"] == "runtime.v1.ImageService"
    assert attrs["rpc.method"] == "ImageStatus"
    assert attrs["rpc.grpc.status_code"] == grpc.StatusCode.OK.value[0]
    assert attrs[names.ATTR_REFERENCE] == HIT
    assert attrs[names.ATTR_NORMALIZED] == HIT
    assert attrs[names.ATTR_FOUND] is True
    assert attrs[names.ATTR_IMAGE_ID] == image_id
    assert attrs[names.ATTR_BACKEND] == "demo"
    assert server.status.status_code is StatusCode.UNSET
    assert exception_events(server) == []

    (child,) = children(spans, server)
    assert child.name == "get_image demo"
    assert child.kind is SpanKind.INTERNAL
    assert child.context.trace_id == server.context.trace_id
    assert dict(child.attributes or {}) == {
        names.ATTR_PLUGIN_KIND: "backend",
        names.ATTR_PLUGIN_NAME: "demo",
        names.ATTR_PLUGIN_TYPE: "oci-dir",
        names.ATTR_OPERATION: "get_image",
        names.ATTR_OUTCOME: "hit",
    }
    assert child.start_time is not None and child.end_time is not None
    assert server.start_time <= child.start_time <= child.end_time <= server.end_time  # type: ignore[operator]

    resource = dict(server.resource.attributes)
    assert resource["service.name"] == "crishim"
    assert resource["service.version"] == __version__
    assert resource["host.name"]


def test_miss_says_not_found_and_names_no_image() -> None:
    with traced() as (shim, exporter):
        assert not status(shim, "busybox").HasField("image")
        spans = finished(shim, exporter)
    server = one_server_span(spans)
    attrs = dict(server.attributes or {})
    assert attrs[names.ATTR_REFERENCE] == "busybox"
    assert attrs[names.ATTR_NORMALIZED] == "docker.io/library/busybox:latest"
    assert attrs[names.ATTR_FOUND] is False
    assert names.ATTR_IMAGE_ID not in attrs
    assert names.ATTR_BACKEND not in attrs
    (child,) = children(spans, server)
    assert child.attributes is not None
    assert child.attributes[names.ATTR_OUTCOME] == "miss"


def test_two_backends_one_child_each_in_order(tmp_path: Path) -> None:
    LayoutBuilder(tmp_path / "empty").write()
    first = {"name": "first", "type": "oci-dir", "options": {"path": str(tmp_path / "empty")}}
    with traced([first, {**DEMO, "name": "second"}]) as (shim, exporter):
        status(shim, HIT)
        spans = finished(shim, exporter)
    server = one_server_span(spans)
    kids = sorted(children(spans, server), key=lambda s: s.start_time or 0)
    assert [k.name for k in kids][:2] == ["get_image first", "get_image second"]
    assert kids[0].attributes is not None and kids[1].attributes is not None
    assert kids[0].attributes[names.ATTR_OUTCOME] == "miss"
    assert kids[1].attributes[names.ATTR_OUTCOME] == "hit"
    assert dict(server.attributes or {})[names.ATTR_BACKEND] == "second"


def test_invalid_reference_records_the_error_once_and_calls_no_plugin() -> None:
    with traced() as (shim, exporter):
        with pytest.raises(grpc.RpcError) as info:
            status(shim, "Not A Reference")
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        spans = finished(shim, exporter)
    server = one_server_span(spans)
    attrs = dict(server.attributes or {})
    assert attrs["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert attrs[names.ATTR_REFERENCE] == "Not A Reference"
    assert names.ATTR_NORMALIZED not in attrs
    (event,) = exception_events(server)
    assert event["exception.type"].endswith("ReferenceError")
    assert "Not A Reference" in event["exception.message"]
    # a client error leaves the server span's status unset (RPC semantic conventions)
    assert server.status.status_code is StatusCode.UNSET
    assert children(spans, server, kind=None) == []


def test_plugin_crash_is_an_error_span_and_the_next_backend_answers() -> None:
    failing = {"name": "broken", "type": "failing", "options": {"mode": "crash"}}
    with traced([failing, DEMO]) as (shim, exporter):
        assert status(shim, HIT).HasField("image")
        spans = finished(shim, exporter)
    server = one_server_span(spans)
    assert server.status.status_code is StatusCode.UNSET
    assert exception_events(server) == []
    assert dict(server.attributes or {})[names.ATTR_BACKEND] == "demo"
    by_name = {s.name: s for s in children(spans, server)}
    broken, demo = by_name["get_image broken"], by_name["get_image demo"]
    assert broken.status.status_code is StatusCode.ERROR
    assert "the failing backend broke" in (broken.status.description or "")
    (event,) = exception_events(broken)
    assert event["exception.type"] == "RuntimeError"
    assert broken.attributes is not None and demo.attributes is not None
    assert broken.attributes[names.ATTR_OUTCOME] == "error"
    assert broken.attributes[names.ATTR_PLUGIN_TYPE] == "failing"
    assert demo.attributes[names.ATTR_OUTCOME] == "hit"


def test_plugin_domain_error_fails_the_call_and_is_recorded_once() -> None:
    failing = {"name": "down", "type": "failing", "options": {"mode": "unavailable"}}
    with traced([failing, DEMO]) as (shim, exporter):
        with pytest.raises(grpc.RpcError) as info:
            status(shim, HIT)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        spans = finished(shim, exporter)
    server = one_server_span(spans)
    # UNAVAILABLE is a server error: the span says so, with the message
    assert server.status.status_code is StatusCode.ERROR
    assert "source is down" in (server.status.description or "")
    (child,) = children(spans, server)
    assert child.status.status_code is StatusCode.ERROR
    events = [e for s in spans for e in exception_events(s)]
    assert len(events) == 1, "the exception is recorded on the plugin span only"
    assert exception_events(child)[0]["exception.type"] == "crishim.errors.Unavailable"


def test_list_and_stream_count_images_and_ask_each_backend() -> None:
    with traced() as (shim, exporter):
        listed = shim.list()
        streamed = [
            i
            for m in shim.images.StreamImages(api_pb2.StreamImagesRequest(), timeout=10)
            for i in m.images
        ]
        spans = finished(shim, exporter)
    assert len(listed) == len(streamed) > 0
    for name in ("runtime.v1.ImageService/ListImages", "runtime.v1.ImageService/StreamImages"):
        (server,) = [s for s in spans if s.name == name]
        assert dict(server.attributes or {})[names.ATTR_IMAGE_COUNT] == len(listed)
        (child,) = children(spans, server)
        assert child.name == "list_images demo"
        assert child.attributes is not None
        assert child.attributes[names.ATTR_OUTCOME] == "hit"


def test_pull_of_a_present_image_without_a_pulling_backend() -> None:
    with traced() as (shim, exporter):
        request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=HIT))
        image_ref = shim.images.PullImage(request, timeout=10).image_ref
        spans = finished(shim, exporter)
    server = one_server_span(spans, "runtime.v1.ImageService/PullImage")
    attrs = dict(server.attributes or {})
    assert attrs[names.ATTR_IMAGE_ID] == image_ref
    assert attrs[names.ATTR_BACKEND] == "demo"


# -- context from the caller -------------------------------------------------------------------


def test_parent_is_taken_from_the_callers_traceparent_and_baggage_passes() -> None:
    traceparent = f"00-{TRACE_ID}-{PARENT_ID}-01"
    with traced() as (shim, exporter):
        status(shim, HIT, metadata=[("traceparent", traceparent), ("baggage", "node=n1")])
        spans = finished(shim, exporter)
    server = one_server_span(spans)
    assert server.parent is not None and server.parent.is_remote
    assert f"{server.context.trace_id:032x}" == TRACE_ID
    assert f"{server.parent.span_id:016x}" == PARENT_ID
    for child in children(spans, server):
        assert f"{child.context.trace_id:032x}" == TRACE_ID


def test_callers_decision_not_to_sample_is_followed() -> None:
    traceparent = f"00-{TRACE_ID}-{PARENT_ID}-00"
    with traced() as (shim, exporter):
        assert status(shim, HIT, metadata=[("traceparent", traceparent)]).HasField("image")
        assert finished(shim, exporter) == []


def test_always_off_sampler_from_the_config() -> None:
    with traced(tracing_config={**TRACING, "sampler": "always_off"}) as (shim, exporter):
        status(shim, HIT)
        assert finished(shim, exporter) == []


# -- off means off -----------------------------------------------------------------------------


def _assert_nothing_installed(shim: RunningShim) -> None:
    assert shim.app.tracer_provider() is None
    assert shim.app.interceptors() == []
    assert shim.catalog.telemetry is None
    for handle in shim.catalog.backends:
        context = getattr(handle.backend, "context", None)
        if context is not None:
            assert isinstance(context.tracer_provider, trace.NoOpTracerProvider)


def test_no_span_when_the_sdk_is_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    with traced() as (shim, exporter):
        assert status(shim, HIT).HasField("image")
        _assert_nothing_installed(shim)
        assert exporter.get_finished_spans() == ()


@pytest.mark.parametrize("tracing_config", [{}, {"exporter": "none"}], ids=["absent", "none"])
def test_tracing_is_off_by_default(tracing_config: dict[str, Any]) -> None:
    with traced(tracing_config=tracing_config) as (shim, exporter):
        assert status(shim, HIT).HasField("image")
        _assert_nothing_installed(shim)
        assert exporter.get_finished_spans() == ()
        assert shim.app.meter_provider() is None


def test_backends_get_the_tracer_provider_when_tracing_is_on() -> None:
    with traced() as (shim, _):
        (handle,) = shim.catalog.backends
        provider = handle.backend.context.tracer_provider  # type: ignore[attr-defined]
        assert provider is shim.app.tracer_provider()


# -- spans of a plugin's own ----------------------------------------------------------------


def test_a_plugins_own_spans_nest_under_its_plugin_span() -> None:
    """A plugin's spans (OpenTelemetry API only) are children of the span the catalog made."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = PluginTelemetry(provider)
    tracer = provider.get_tracer("plugin")

    def pull(_: object) -> str:
        with tracer.start_as_current_span(
            "registry.resolve", attributes={"oci.digest": "sha256:1"}
        ):
            pass
        with tracer.start_as_current_span("registry.fetch_blob"):
            raise Unavailable("gone")

    with pytest.raises(Unavailable):
        telemetry.wrap("cache", "registry-cache", "pull_image", pull)(object())
    spans = {s.name: s for s in exporter.get_finished_spans()}
    outer = spans["pull_image cache"]
    for name in ("registry.resolve", "registry.fetch_blob"):
        assert spans[name].parent is not None
        assert spans[name].parent.span_id == outer.context.span_id
    assert spans["registry.fetch_blob"].status.status_code is StatusCode.ERROR
    assert outer.status.status_code is StatusCode.ERROR
    assert dict(outer.attributes or {})[names.ATTR_OUTCOME] == "error"


def test_an_exception_is_recorded_on_one_span_only() -> None:
    from opentelemetry.sdk.trace import TracerProvider

    from crishim.telemetry.attributes import fail_span

    tracer = TracerProvider().get_tracer("t")
    error = Unavailable("gone")
    inner, outer = tracer.start_span("inner"), tracer.start_span("outer")
    fail_span(inner, error)
    fail_span(outer, error)
    assert [e.name for e in inner.events] == ["exception"]  # type: ignore[attr-defined]
    assert list(outer.events) == []  # type: ignore[attr-defined]
    assert outer.status.status_code is StatusCode.ERROR  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("url", "safe"),
    [
        (
            "https://user:pw@registry.example:5000/v2/x?token=abc#f",
            "https://registry.example:5000/v2/x",
        ),
        ("http://127.0.0.1:4318/v1/traces", "http://127.0.0.1:4318/v1/traces"),
        ("https://[::1]:443/blob?X-Amz-Signature=s", "https://[::1]:443/blob"),
        ("https://u:p@host:99999/x?t=1", "<unparseable URL>"),
    ],
)
def test_safe_url_drops_credentials_and_query(url: str, safe: str) -> None:
    assert safe_url(url) == safe
