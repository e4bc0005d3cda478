"""Tracing and metrics, in memory: span trees, attributes, parents, the off switch.

Every test runs a real server (crishim.testing.server.running_server) with
the container's ``span_exporter`` replaced by an in-memory exporter (the
batch processor, sampler and interceptor are the production ones) or its
``metric_readers`` by an in-memory reader.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from click.testing import CliRunner
from conftest import DEMO_BACKEND
from grpc_health.v1 import health_pb2
from opentelemetry import trace
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from crishim import __version__, hookimpl, tracing
from crishim.cli import main
from crishim.config import ConfigError, parse_settings
from crishim.container import make_application
from crishim.cri.runtime.v1 import api_pb2
from crishim.errors import Unavailable
from crishim.metrics import BACKEND_CALLS, RPC_DURATION, resolve_metrics
from crishim.model import ImageRecord
from crishim.testing.ocibuild import LayoutBuilder
from crishim.testing.server import RunningShim, running_server
from crishim.tracing import resolve_tracing
from crishim.types import BackendContext, BackendOptions, BackendType, IndexedBackend

HIT = "example.com/crishim/web:1.0"
DEMO = DEMO_BACKEND
#: An exporter that is never reached: tests replace it with an in-memory one.
TRACING = {"exporter": "otlp-grpc", "endpoint": "http://127.0.0.1:9"}
STATUS = "runtime.v1.ImageService/ImageStatus"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


@pytest.fixture(autouse=True)
def _no_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The OTEL_* variables of whoever runs the tests must not change them."""
    import os

    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)


# -- plugins for the error cases ---------------------------------------------------------------


class FailingOptions(BackendOptions):
    #: "crash": a plain exception (the catalog logs it and asks the next backend);
    #: "unavailable": a domain error, which becomes the call's answer.
    mode: str = "crash"


class FailingBackend(IndexedBackend):
    def __init__(self, context: BackendContext, options: FailingOptions) -> None:
        super().__init__(context)
        self.mode = options.mode

    def get_image(self, ref: Any) -> ImageRecord | None:
        if self.mode == "unavailable":
            raise Unavailable("the failing backend's source is down")
        raise RuntimeError("the failing backend broke")


class FailingPlugin:
    @hookimpl
    def crishim_backend_types(self) -> list[BackendType]:
        return [BackendType(name="failing", factory=FailingBackend, options_model=FailingOptions)]


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
        and (kind is None or (s.attributes or {}).get(tracing.ATTR_PLUGIN_KIND) == kind)
    ]


def exception_events(span: ReadableSpan) -> list[dict[str, Any]]:
    return [dict(e.attributes or {}) for e in span.events if e.name == "exception"]


def status(shim: RunningShim, ref: str, **kwargs: Any) -> api_pb2.ImageStatusResponse:
    request = api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=ref))
    return shim.images.ImageStatus(request, timeout=10, **kwargs)


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
    assert attrs[tracing.ATTR_REFERENCE] == HIT
    assert attrs[tracing.ATTR_NORMALIZED] == HIT
    assert attrs[tracing.ATTR_FOUND] is True
    assert attrs[tracing.ATTR_IMAGE_ID] == image_id
    assert attrs[tracing.ATTR_BACKEND] == "demo"
    assert server.status.status_code is StatusCode.UNSET
    assert exception_events(server) == []

    (child,) = children(spans, server)
    assert child.name == "get_image demo"
    assert child.kind is SpanKind.INTERNAL
    assert child.context.trace_id == server.context.trace_id
    assert dict(child.attributes or {}) == {
        tracing.ATTR_PLUGIN_KIND: "backend",
        tracing.ATTR_PLUGIN_NAME: "demo",
        tracing.ATTR_PLUGIN_TYPE: "oci-dir",
        tracing.ATTR_OPERATION: "get_image",
        tracing.ATTR_OUTCOME: "hit",
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
    assert attrs[tracing.ATTR_REFERENCE] == "busybox"
    assert attrs[tracing.ATTR_NORMALIZED] == "docker.io/library/busybox:latest"
    assert attrs[tracing.ATTR_FOUND] is False
    assert tracing.ATTR_IMAGE_ID not in attrs
    assert tracing.ATTR_BACKEND not in attrs
    (child,) = children(spans, server)
    assert child.attributes is not None
    assert child.attributes[tracing.ATTR_OUTCOME] == "miss"


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
    assert kids[0].attributes[tracing.ATTR_OUTCOME] == "miss"
    assert kids[1].attributes[tracing.ATTR_OUTCOME] == "hit"
    assert dict(server.attributes or {})[tracing.ATTR_BACKEND] == "second"


def test_invalid_reference_records_the_error_once_and_calls_no_plugin() -> None:
    with traced() as (shim, exporter):
        with pytest.raises(grpc.RpcError) as info:
            status(shim, "Not A Reference")
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        spans = finished(shim, exporter)
    server = one_server_span(spans)
    attrs = dict(server.attributes or {})
    assert attrs["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert attrs[tracing.ATTR_REFERENCE] == "Not A Reference"
    assert tracing.ATTR_NORMALIZED not in attrs
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
    assert dict(server.attributes or {})[tracing.ATTR_BACKEND] == "demo"
    by_name = {s.name: s for s in children(spans, server)}
    broken, demo = by_name["get_image broken"], by_name["get_image demo"]
    assert broken.status.status_code is StatusCode.ERROR
    assert "the failing backend broke" in (broken.status.description or "")
    (event,) = exception_events(broken)
    assert event["exception.type"] == "RuntimeError"
    assert broken.attributes is not None and demo.attributes is not None
    assert broken.attributes[tracing.ATTR_OUTCOME] == "error"
    assert broken.attributes[tracing.ATTR_PLUGIN_TYPE] == "failing"
    assert demo.attributes[tracing.ATTR_OUTCOME] == "hit"


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
        assert dict(server.attributes or {})[tracing.ATTR_IMAGE_COUNT] == len(listed)
        (child,) = children(spans, server)
        assert child.name == "list_images demo"
        assert child.attributes is not None
        assert child.attributes[tracing.ATTR_OUTCOME] == "hit"


def test_pull_of_a_present_image_without_a_pulling_backend() -> None:
    with traced() as (shim, exporter):
        request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=HIT))
        image_ref = shim.images.PullImage(request, timeout=10).image_ref
        spans = finished(shim, exporter)
    server = one_server_span(spans, "runtime.v1.ImageService/PullImage")
    attrs = dict(server.attributes or {})
    assert attrs[tracing.ATTR_IMAGE_ID] == image_ref
    assert attrs[tracing.ATTR_BACKEND] == "demo"


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


# -- helpers for plugins -----------------------------------------------------------------------


def test_step_spans_nest_under_the_plugin_span_and_record_errors_once() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = tracing.PluginTelemetry(provider)
    tracer = provider.get_tracer("plugin")

    def pull(_: object) -> str:
        with tracing.step(tracer, "registry.resolve", {"oci.digest": "sha256:1"}):
            pass
        with tracing.step(tracer, "registry.fetch_blob"):
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
    assert len(exception_events(spans["registry.fetch_blob"])) == 1
    assert exception_events(outer) == []


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
    assert tracing.safe_url(url) == safe


# -- the effective setup -----------------------------------------------------------------------


def _tracing(config: dict[str, Any] | None, env: dict[str, str]) -> tracing.TracingSetup:
    data: dict[str, Any] = {"backends": [DEMO]}
    if config is not None:
        data["tracing"] = config
    return resolve_tracing(parse_settings(data).tracing, env)


def test_environment_alone_turns_tracing_on() -> None:
    setup = _tracing(
        None,
        {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
            "OTEL_EXPORTER_OTLP_HEADERS": "api-key=from-env,x-tenant=t1",
            "OTEL_TRACES_SAMPLER": "traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.25",
            "OTEL_SERVICE_NAME": "node-images",
        },
    )
    assert setup.enabled
    assert setup.exporter == "otlp-http"
    assert setup.endpoint == "http://collector:4318/v1/traces"
    assert setup.headers == {"api-key": "from-env", "x-tenant": "t1"}
    assert (setup.sampler, setup.sampler_arg) == ("traceidratio", 0.25)
    assert setup.service_name == "node-images"


def test_the_config_file_wins_where_both_speak() -> None:
    setup = _tracing(
        {
            "exporter": "otlp-grpc",
            "endpoint": "http://127.0.0.1:4317",
            "headers": {"API-Key": "from-file"},
            "sampler": "parentbased_always_off",
            "service_name": "from-file",
        },
        {
            "OTEL_TRACES_EXPORTER": "console",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://elsewhere:4317",
            "OTEL_EXPORTER_OTLP_HEADERS": "api-key=from-env,x-tenant=t1",
            "OTEL_TRACES_SAMPLER": "always_on",
            "OTEL_SERVICE_NAME": "from-env",
        },
    )
    assert (setup.exporter, setup.exporter_from) == ("otlp-grpc", "config")
    assert (setup.endpoint, setup.endpoint_from) == ("http://127.0.0.1:4317", "config")
    assert setup.headers == {"api-key": "from-file", "x-tenant": "t1"}
    assert setup.sampler == "parentbased_always_off"
    assert setup.service_name == "from-file"


def test_defaults_and_the_kill_switch() -> None:
    off = _tracing(None, {})
    assert not off.enabled and off.exporter == "none"
    on = _tracing({"exporter": "otlp-grpc"}, {})
    assert on.enabled
    assert on.endpoint == "http://localhost:4317"
    assert on.sampler == "parentbased_always_on"
    http = _tracing({"exporter": "otlp-http"}, {})
    assert http.endpoint == "http://localhost:4318/v1/traces"
    killed = _tracing({"exporter": "otlp-grpc"}, {"OTEL_SDK_DISABLED": "TRUE"})
    assert not killed.enabled
    assert "OTEL_SDK_DISABLED" in killed.describe()


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER"),
        ({"OTEL_TRACES_SAMPLER_ARG": "half"}, "OTEL_TRACES_SAMPLER_ARG"),
        ({"OTEL_TRACES_SAMPLER_ARG": "2"}, "OTEL_TRACES_SAMPLER_ARG"),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
    ],
)
def test_bad_environment_is_a_config_error_naming_the_variable(
    env: dict[str, str], key: str
) -> None:
    with pytest.raises(ConfigError) as info:
        _tracing(None, env)
    assert info.value.problems[0][0] == key


@pytest.mark.parametrize(
    ("section", "key", "reason"),
    [
        ({"exporter": "jaeger"}, "tracing.exporter", "Input should be"),
        ({"endpoint": "https://u:p@collector:4317"}, "tracing.endpoint", "credentials"),
        ({"endpoint": "http://collector:4318?key=x"}, "tracing.endpoint", "query"),
        ({"endpoint": "collector:4317"}, "tracing.endpoint", "http://"),
        ({"sampler_arg": 1.5}, "tracing.sampler_arg", "less than or equal"),
        ({"headers": {"bad header": "x"}}, "tracing.headers", "header name"),
        ({"batch": {"schedule_delay": 0}}, "tracing.batch.schedule_delay", "greater than"),
        ({"sampling": "always_on"}, "tracing.sampling", "unknown key"),
    ],
)
def test_config_errors_name_the_key(section: dict[str, Any], key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings({"backends": [DEMO], "tracing": section}, source="c.yaml")
    problems = dict(info.value.problems)
    assert key in problems, problems
    assert reason in problems[key]


def test_check_config_shows_the_effective_setup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        json.dumps(
            {
                "backends": [DEMO],
                "tracing": {
                    "exporter": "otlp-grpc",
                    "endpoint": "http://127.0.0.1:4317",
                    "headers": {"authorization": "Bearer very-secret-value"},
                },
                "metrics": {"exporter": "otlp-http", "prometheus": {"port": 9464}},
            }
        )
    )
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.5")
    result = CliRunner().invoke(main, ["check-config", str(config)])
    assert result.exit_code == 0, result.output
    lines = {line.split(":", 1)[0]: line for line in result.output.splitlines()}
    assert lines["tracing"].startswith("tracing: on: otlp-grpc to http://127.0.0.1:4317")
    assert "authorization=<hidden>" in lines["tracing"]
    assert "parentbased_traceidratio 0.5 (from OTEL_TRACES_SAMPLER)" in lines["tracing"]
    assert "otlp-http to http://localhost:4318/v1/metrics" in lines["metrics"]
    assert "prometheus scrape endpoint http://127.0.0.1:9464/metrics" in lines["metrics"]
    assert "very-secret-value" not in result.output

    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    result = CliRunner().invoke(main, ["check-config", str(config)])
    assert "tracing: off (OTEL_SDK_DISABLED=true)" in result.output
    assert "metrics: off (OTEL_SDK_DISABLED=true)" in result.output


def test_check_config_reports_bad_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({"backends": [DEMO]}))
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "sometimes")
    result = CliRunner().invoke(main, ["check-config", str(config)])
    assert result.exit_code == 2
    assert "environment: OTEL_TRACES_SAMPLER: unknown sampler 'sometimes'" in result.output


# -- metrics -----------------------------------------------------------------------------------


def _points(reader: InMemoryMetricReader, name: str) -> list[tuple[dict[str, Any], Any]]:
    data = reader.get_metrics_data()
    out = []
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == name:
                    out.extend((dict(p.attributes or {}), p) for p in metric.data.data_points)
    return out


def test_metrics_rpc_durations_by_method_and_status_and_backend_outcomes() -> None:
    reader = InMemoryMetricReader()
    failing = {"name": "broken", "type": "failing", "options": {"mode": "crash"}}
    config = {
        "backends": [failing, DEMO],
        "metrics": {"exporter": "otlp-grpc", "endpoint": "http://127.0.0.1:9"},
    }
    with running_server(
        config,
        extra_plugins=[("failing", FailingPlugin())],
        overrides={"metric_readers": [reader]},
    ) as shim:
        assert shim.app.interceptors() != []  # the metrics interceptor, no tracing one
        assert shim.app.tracer_provider() is None
        status(shim, HIT)
        status(shim, "busybox")
        with pytest.raises(grpc.RpcError):
            status(shim, "Not A Reference")
        assert list(shim.images.StreamImages(api_pb2.StreamImagesRequest(), timeout=10))
        shim.health.Check(health_pb2.HealthCheckRequest(), timeout=10)  # not measured
        durations = {
            (a["rpc.method"], a["rpc.response.status_code"]): p.count
            for a, p in _points(reader, RPC_DURATION)
        }
        calls = {
            (
                a[tracing.ATTR_PLUGIN_NAME],
                a[tracing.ATTR_OPERATION],
                a[tracing.ATTR_OUTCOME],
            ): p.value
            for a, p in _points(reader, BACKEND_CALLS)
            if a[tracing.ATTR_PLUGIN_KIND] == "backend"
        }
    assert durations == {
        ("ImageStatus", "OK"): 2,
        ("ImageStatus", "INVALID_ARGUMENT"): 1,
        ("StreamImages", "OK"): 1,
    }
    # the hit asks "broken" twice: for the name, then for the ID (merging names);
    # the stream asks every backend for its list ("broken" lists nothing)
    assert calls == {
        ("broken", "get_image", "error"): 3,
        ("broken", "list_images", "miss"): 1,
        ("demo", "get_image", "hit"): 1,
        ("demo", "get_image", "miss"): 1,
        ("demo", "list_images", "hit"): 1,
    }


def test_prometheus_scrape_endpoint() -> None:
    config = {"backends": [DEMO], "metrics": {"prometheus": {"host": "127.0.0.1", "port": 0}}}
    with running_server(config) as shim:
        status(shim, HIT)
        endpoint = shim.app.prometheus()
        assert endpoint is not None
        with urllib.request.urlopen(endpoint.url, timeout=10) as response:
            text = response.read().decode()
    assert "rpc_server_call_duration_seconds_count{" in text
    assert 'rpc_method="ImageStatus"' in text
    assert "crishim_backend_calls" in text
    assert 'crishim_plugin_outcome="hit"' in text


def test_metrics_setup_from_environment() -> None:
    setup = resolve_metrics(
        parse_settings({"backends": [DEMO]}).metrics,
        {"OTEL_METRICS_EXPORTER": "prometheus", "OTEL_EXPORTER_PROMETHEUS_PORT": "9999"},
    )
    assert setup.enabled and setup.prometheus == ("127.0.0.1", 9999)
    assert not resolve_metrics(None, {}).enabled
    pushed = resolve_metrics(
        None, {"OTEL_METRICS_EXPORTER": "otlp", "OTEL_METRIC_EXPORT_INTERVAL": "5000"}
    )
    assert (pushed.exporter, pushed.interval) == ("otlp-grpc", 5.0)


# -- the span encoder --------------------------------------------------------------------------


def test_span_encoder_builds_the_sdk_encoders_message() -> None:
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, TraceFlags, TraceState

    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=tracing.make_resource("encoder-test"))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    remote = SpanContext(
        int(TRACE_ID, 16),
        int(PARENT_ID, 16),
        is_remote=True,
        trace_flags=TraceFlags(1),
        trace_state=TraceState([("vendor", "x")]),
    )
    parent = trace.set_span_in_context(NonRecordingSpan(remote))
    for scope in ("one", "two"):
        tracer = provider.get_tracer(scope, "1.0")
        with tracer.start_as_current_span(
            "server", context=parent, kind=SpanKind.SERVER, attributes={"a": 1, "b": "x"}
        ) as span:
            span.set_attributes({"f": 1.5, "t": True, "seq": ["p", "q"], "ints": [1, 2]})
            with tracer.start_as_current_span("child", links=[Link(remote, {"l": "v"})]):
                pass
            try:
                raise ValueError("boom")
            except ValueError as exc:
                span.record_exception(exc)
                span.set_status(StatusCode.ERROR, "it broke")
    spans = exporter.get_finished_spans()
    assert len(spans) == 4
    encoder = tracing.SpanEncoder()
    for _ in range(2):  # the second time from the caches
        assert encoder.encode(spans) == encode_spans(spans)
    encoder.MAX_CACHED = 3
    assert encoder.encode(spans) == encode_spans(spans)


def test_the_grpc_exporter_uses_the_span_encoder() -> None:
    setup = tracing.resolve_tracing(
        parse_settings({"backends": [DEMO], "tracing": TRACING}).tracing, {}
    )
    exporter = tracing.make_span_exporter(setup)
    assert isinstance(getattr(exporter, "encoder", None), tracing.SpanEncoder)
    assert exporter is not None
    exporter.shutdown()


def test_the_scrape_endpoint_starts_with_the_server_only() -> None:
    import socket

    from crishim.server import SocketError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = parse_settings(
            {"backends": [DEMO], "metrics": {"prometheus": {"port": port}}}, source="c.yaml"
        )
        app = make_application(settings)
        # what `crishim pull` and `crishim images` build: no port taken
        assert app.catalog().telemetry is not None
        assert app.meter_provider() is not None
        with pytest.raises(SocketError) as info:
            app.server()
        app.shutdown_resources()
    assert str(info.value) == (
        f"c.yaml: metrics.prometheus: cannot listen on 127.0.0.1:{port}: Address already in use"
    )
