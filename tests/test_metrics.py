"""Metrics: RPC durations, plugin outcomes, the scrape endpoint, the setup.

The servers are real (crishim.testing.server.running_server), their
``metric_readers`` replaced by an in-memory reader where a test reads values.
"""

from __future__ import annotations

import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from crishim.config import ConfigError, parse_settings
from crishim.container import make_application
from crishim.cri.runtime.v1 import api_pb2
from crishim.telemetry import attributes as names
from crishim.telemetry.metrics import BACKEND_CALLS, RPC_DURATION, EndpointError, resolve_metrics
from crishim.testing.server import running_server
from tests.telemetry_support import DEMO, HIT, FailingPlugin, metric_points, status

pytestmark = pytest.mark.usefixtures("no_otel_env")


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
            for a, p in metric_points(reader, RPC_DURATION)
        }
        calls = {
            (
                a[names.ATTR_PLUGIN_NAME],
                a[names.ATTR_OPERATION],
                a[names.ATTR_OUTCOME],
            ): p.value
            for a, p in metric_points(reader, BACKEND_CALLS)
            if a[names.ATTR_PLUGIN_KIND] == "backend"
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
    # the SDK reads the interval itself; check-config says what it will be
    assert (pushed.exporter, pushed.interval) == ("otlp-grpc", None)
    assert pushed.shown["interval"] == ("5s", "OTEL_METRIC_EXPORT_INTERVAL")
    stated = parse_settings({"backends": [DEMO], "metrics": {"interval": 2}}).metrics
    assert resolve_metrics(stated, {"OTEL_METRICS_EXPORTER": "otlp"}).interval == 2
    with pytest.raises(ConfigError) as info:
        resolve_metrics(
            None, {"OTEL_METRICS_EXPORTER": "prometheus", "OTEL_EXPORTER_PROMETHEUS_PORT": "x"}
        )
    assert info.value.problems[0][0] == "OTEL_EXPORTER_PROMETHEUS_PORT"


def test_a_scrape_endpoint_keeps_metrics_on_without_an_exporter() -> None:
    config = {"backends": [DEMO], "metrics": {"prometheus": {"port": 9464}}}
    settings = parse_settings(config).metrics
    setup = resolve_metrics(settings, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"})
    assert setup.enabled, setup.off_reason
    assert setup.describe().startswith("on: prometheus scrape endpoint http://127.0.0.1:9464/")


def test_the_scrape_endpoint_starts_with_the_server_only() -> None:
    import socket

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
        with pytest.raises(EndpointError) as info:
            app.server()
        app.shutdown_resources()
    assert str(info.value) == (
        f"c.yaml: metrics.prometheus: cannot listen on 127.0.0.1:{port}: Address already in use"
    )
