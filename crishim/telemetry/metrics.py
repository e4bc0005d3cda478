"""Metrics: RPC durations and plugin hits/misses/errors, OpenTelemetry SDK.

* ``rpc.server.call.duration`` (histogram, seconds) by ``rpc.method`` and
  ``rpc.response.status_code`` (the gRPC code's name), recorded by
  :class:`RpcMetricsInterceptor`;
* ``crishim.backend.calls`` (counter) by plugin kind, name, type, operation
  and outcome (hit, miss, error...), counted by the catalog through
  :class:`crishim.telemetry.spans.PluginTelemetry`.

Exported over OTLP (gRPC or HTTP) or to the console on an interval, and/or
served for scraping on a Prometheus endpoint. Off unless configured: then
no meter provider exists and nothing is recorded anywhere. As for traces
(:mod:`crishim.telemetry.setup`), what the file states is passed to the
SDK and the SDK reads ``OTEL_*`` for the rest.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from crishim import __version__
from crishim.config import MetricsSettings, TracingSettings
from crishim.telemetry import SCOPE
from crishim.telemetry.calls import CallObserver
from crishim.telemetry.setup import (
    ExportSetup,
    env_number,
    make_resource,
    origin,
    resolve_export,
)

if TYPE_CHECKING:
    from opentelemetry.metrics import Counter, Histogram
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricReader

log = logging.getLogger(__name__)

RPC_DURATION = "rpc.server.call.duration"
BACKEND_CALLS = "crishim.backend.calls"
#: From 100 µs (ImageStatus from memory) to 5 minutes (a large pull).
DURATION_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)


class EndpointError(Exception):
    """The Prometheus scrape endpoint cannot listen where it is configured to."""


@dataclass(frozen=True)
class MetricsSetup(ExportSetup):
    """The metrics configuration in force, after config and environment."""

    #: Seconds between two pushes, as the file states (None: the SDK reads
    #: OTEL_METRIC_EXPORT_INTERVAL, in ms, else 60 s).
    interval: float | None = None
    #: ``(host, port)`` of the Prometheus scrape endpoint, or None.
    prometheus: tuple[str, int] | None = None
    prometheus_from: str = ""

    def describe(self) -> str:
        """One line for ``crishim check-config``."""
        if not self.enabled:
            return f"off ({self.off_reason})"
        parts = []
        if self.exporter != "none":
            parts.append(f"{self.describe_export()} every {self._part('interval')}")
        if self.prometheus is not None:
            host, port = self.prometheus
            parts.append(
                f"prometheus scrape endpoint http://{host}:{port}/metrics "
                f"(from {self.prometheus_from})"
            )
        return f"on: {'; '.join(parts)}; service.name {self._part('service.name')}"


def resolve_metrics(
    settings: MetricsSettings | None = None,
    environ: Mapping[str, str] | None = None,
    tracing_settings: TracingSettings | None = None,
) -> MetricsSetup:
    """The metrics setup from the config section and ``OTEL_*`` (config wins).

    ``service.name`` falls back on the tracing section's, so one setting names both.
    """
    settings = settings if settings is not None else MetricsSettings()
    if settings.service_name is None and tracing_settings is not None:
        settings = settings.model_copy(update={"service_name": tracing_settings.service_name})
    env = os.environ if environ is None else environ
    fields = resolve_export(settings, env, "metrics")
    if fields["exporter_from"] == "OTEL_SDK_DISABLED":
        return MetricsSetup(**fields)
    prometheus: tuple[str, int] | None = None
    prometheus_from = ""
    if settings.prometheus is not None:
        prometheus = (settings.prometheus.host, settings.prometheus.port)
        prometheus_from = "config"
    elif settings.exporter is None and env.get("OTEL_METRICS_EXPORTER", "").strip() == "prometheus":
        host = env.get("OTEL_EXPORTER_PROMETHEUS_HOST", "").strip() or "127.0.0.1"
        port = env_number(env, "OTEL_EXPORTER_PROMETHEUS_PORT", 0, 65535, integer=True)
        prometheus = (host, 9464 if port is None else int(port))
        prometheus_from = "OTEL_METRICS_EXPORTER"
    env_number(env, "OTEL_METRIC_EXPORT_INTERVAL", 1)
    interval, interval_from = origin(settings.interval, env, "OTEL_METRIC_EXPORT_INTERVAL")
    if interval_from == "OTEL_METRIC_EXPORT_INTERVAL":
        interval = float(interval) / 1000
    fields["shown"]["interval"] = (f"{float(interval or 60):g}s", interval_from)
    if prometheus is not None:
        fields["off_reason"] = ""  # on: the scrape endpoint serves them
    elif fields["exporter"] == "none" and not fields.get("off_reason"):
        fields["off_reason"] = f"exporter none, from {fields['exporter_from']}; no prometheus"
    return MetricsSetup(
        **fields,
        interval=settings.interval,
        prometheus=prometheus,
        prometheus_from=prometheus_from,
    )


def make_metric_readers(setup: MetricsSetup) -> list[MetricReader]:
    """The push readers the setup names (the Prometheus one is the endpoint's)."""
    if not setup.enabled or setup.exporter == "none":
        return []
    from opentelemetry.sdk.metrics.export import (
        ConsoleMetricExporter,
        MetricExporter,
        PeriodicExportingMetricReader,
    )

    exporter: MetricExporter
    if setup.exporter == "console":
        exporter = ConsoleMetricExporter()
    elif setup.exporter == "otlp-grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
            OTLPMetricExporter as GrpcExporter,
        )

        exporter = GrpcExporter(
            endpoint=setup.endpoint, headers=dict(setup.headers) or None, timeout=setup.timeout
        )
    else:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
            OTLPMetricExporter as HttpExporter,
        )

        exporter = HttpExporter(
            endpoint=setup.endpoint, headers=dict(setup.headers) or None, timeout=setup.timeout
        )
    interval = setup.interval * 1000 if setup.interval is not None else None
    return [PeriodicExportingMetricReader(exporter, export_interval_millis=interval)]


@dataclass
class PrometheusReader:
    """The reader a scrape endpoint serves, with its own registry (no global state)."""

    reader: MetricReader
    registry: Any


def make_prometheus_reader(setup: MetricsSetup) -> PrometheusReader | None:
    """The Prometheus reader when a scrape endpoint is configured; it binds no port."""
    if not setup.enabled or setup.prometheus is None:
        return None
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=True)
    return PrometheusReader(PrometheusMetricReader(registry=registry), registry)


@dataclass
class PrometheusEndpoint:
    """A running scrape endpoint and the address it listens on."""

    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"


def prometheus_endpoint_resource(
    setup: MetricsSetup, prometheus: PrometheusReader | None, source: str = "<config>"
) -> Iterator[PrometheusEndpoint | None]:
    """The scrape endpoint while the server runs; None unless configured.

    Only the server needs it (through :func:`rpc_metrics_interceptor`):
    ``crishim pull`` with the server's config must not fight it for the port.
    """
    if prometheus is None or setup.prometheus is None:
        yield None
        return
    from prometheus_client import start_http_server

    host, port = setup.prometheus
    try:
        httpd, thread = start_http_server(port, addr=host, registry=prometheus.registry)
    except OSError as exc:
        raise EndpointError(
            f"{source}: metrics.prometheus: cannot listen on {host}:{port}: {exc.strerror}"
        ) from None
    endpoint = PrometheusEndpoint(host, int(httpd.server_port))
    log.info("metrics: prometheus scrape endpoint on %s", endpoint.url)
    try:
        yield endpoint
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def meter_provider_resource(
    setup: MetricsSetup,
    readers: list[MetricReader],
    prometheus: PrometheusReader | None = None,
) -> Iterator[MeterProvider | None]:
    """The meter provider for the container's lifetime; None when metrics are off.

    ``app.shutdown_resources()`` shuts it down: the readers collect and
    export a last time.
    """
    all_readers = [*readers, *([prometheus.reader] if prometheus is not None else [])]
    if not setup.enabled or not all_readers:
        yield None
        return
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View

    provider = MeterProvider(
        metric_readers=all_readers,
        resource=make_resource(setup.service_name),
        views=[
            View(
                instrument_name=RPC_DURATION,
                aggregation=ExplicitBucketHistogramAggregation(DURATION_BUCKETS),
            )
        ],
    )
    log.info("metrics: %s", setup.describe())
    try:
        yield provider
    finally:
        provider.shutdown()


def backend_calls_counter(meter_provider: MeterProvider | None) -> Counter | None:
    """The hits/misses/errors counter the catalog's plugin calls feed; None when off."""
    if meter_provider is None:
        return None
    meter = meter_provider.get_meter(SCOPE, __version__)
    return meter.create_counter(
        BACKEND_CALLS,
        unit="{call}",
        description="Plugin calls by backend, operation and outcome (hit, miss, error).",
    )


class RpcMetricsInterceptor(CallObserver):
    """Records ``rpc.server.call.duration`` by method and gRPC status code."""

    def __init__(self, meter_provider: MeterProvider) -> None:
        super().__init__()
        meter = meter_provider.get_meter(SCOPE, __version__)
        self.duration: Histogram = meter.create_histogram(
            RPC_DURATION,
            unit="s",
            description="Duration of incoming RPCs, by method and status code.",
        )
        self._attrs: dict[tuple[str, str], dict[str, Any]] = {}

    def _attributes(self, method: str, code: grpc.StatusCode | None) -> dict[str, Any]:
        name = code.name if code is not None else "OK"
        key = (method, name)
        attrs = self._attrs.get(key)
        if attrs is None:
            service, _, short = method.lstrip("/").rpartition("/")
            attrs = self._attrs[key] = {
                "rpc.system": "grpc",
                "rpc.service": service,
                "rpc.method": short,
                "rpc.response.status_code": name,
            }
        return attrs

    def start(self, method: str, context: grpc.ServicerContext) -> float:
        return time.perf_counter()

    def end(
        self,
        state: float,
        method: str,
        context: grpc.ServicerContext,
        code: grpc.StatusCode | None,
    ) -> None:
        self.duration.record(time.perf_counter() - state, self._attributes(method, code))


def rpc_metrics_interceptor(
    meter_provider: MeterProvider | None, prometheus: PrometheusEndpoint | None = None
) -> RpcMetricsInterceptor | None:
    """The server's side of metrics: the RPC interceptor (None when metrics are off).

    ``prometheus`` is only here so that the scrape endpoint starts with the
    server (and not with ``crishim pull`` or ``crishim images``).
    """
    return RpcMetricsInterceptor(meter_provider) if meter_provider is not None else None
