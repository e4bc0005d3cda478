"""Metrics: RPC durations and backend hits/misses/errors, OpenTelemetry SDK.

* ``rpc.server.call.duration`` (histogram, seconds) by ``rpc.method`` and
  ``rpc.response.status_code`` (the gRPC code's name), recorded by
  :class:`RpcMetricsInterceptor`;
* ``crishim.backend.calls`` (counter) by backend name, type, operation and
  outcome (hit, miss, error), counted by the catalog through
  :class:`crishim.tracing.PluginTelemetry`.

Exported over OTLP (gRPC or HTTP) or to the console on an interval, and/or
served for scraping on a Prometheus endpoint. Off unless configured: then
no meter provider exists and nothing is recorded anywhere.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from crishim import __version__, tracing
from crishim.config import ConfigError, MetricsSettings, TracingSettings
from crishim.server import SocketError

if TYPE_CHECKING:
    from opentelemetry.metrics import Counter, Histogram
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricReader

log = logging.getLogger(__name__)

RPC_DURATION = "rpc.server.call.duration"
_CRI_PREFIX = f"/{tracing.CRI_SERVICE}/"
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


@dataclass(frozen=True)
class MetricsSetup(tracing.ExportSetup):
    """The metrics configuration in force, after config and environment."""

    #: Seconds between two pushes to the exporter.
    interval: float = 60.0
    #: ``(host, port)`` of the Prometheus scrape endpoint, or None.
    prometheus: tuple[str, int] | None = None
    prometheus_from: str = ""

    def describe(self) -> str:
        """One line for ``crishim check-config``."""
        if not self.enabled:
            return f"off ({self.off_reason})"
        parts = []
        if self.exporter != "none":
            parts.append(f"{self.describe_export()} every {self.interval:g}s")
        if self.prometheus is not None:
            host, port = self.prometheus
            parts.append(
                f"prometheus scrape endpoint http://{host}:{port}/metrics "
                f"(from {self.prometheus_from})"
            )
        return f"on: {'; '.join(parts)}; service.name {self.service_name}"


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
    fields = tracing.resolve_export(settings, env, "metrics")
    if fields.get("off_reason"):
        return MetricsSetup(**fields)
    prometheus: tuple[str, int] | None = None
    prometheus_from = ""
    if settings.prometheus is not None:
        prometheus = (settings.prometheus.host, settings.prometheus.port)
        prometheus_from = "config"
    elif settings.exporter is None and env.get("OTEL_METRICS_EXPORTER", "").strip() == "prometheus":
        host = env.get("OTEL_EXPORTER_PROMETHEUS_HOST", "").strip() or "127.0.0.1"
        raw_port = env.get("OTEL_EXPORTER_PROMETHEUS_PORT", "").strip() or "9464"
        if not raw_port.isdigit() or int(raw_port) > 65535:
            raise ConfigError(
                tracing.ENV_SOURCE, [("OTEL_EXPORTER_PROMETHEUS_PORT", f"not a port: {raw_port!r}")]
            )
        prometheus = (host, int(raw_port))
        prometheus_from = "OTEL_METRICS_EXPORTER"
    interval = settings.interval
    if interval is None:
        interval = tracing._float_env(env, "OTEL_METRIC_EXPORT_INTERVAL", tracing.ENV_SOURCE, 0.001)
    if fields["exporter"] == "none" and prometheus is None:
        fields["off_reason"] = f"exporter none, from {fields['exporter_from']}; no prometheus"
    return MetricsSetup(
        **fields,
        interval=interval or 60.0,
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
    return [PeriodicExportingMetricReader(exporter, export_interval_millis=setup.interval * 1000)]


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
        raise SocketError(
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
        resource=tracing.make_resource(setup.service_name),
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
    meter = meter_provider.get_meter(tracing.SCOPE, __version__)
    return meter.create_counter(
        BACKEND_CALLS,
        unit="{call}",
        description="Plugin calls by backend, operation and outcome (hit, miss, error).",
    )


class RpcMetricsInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Records ``rpc.server.call.duration`` by method and gRPC status code."""

    def __init__(self, meter_provider: MeterProvider) -> None:
        meter = meter_provider.get_meter(tracing.SCOPE, __version__)
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

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        method: str = details.method
        if handler is None or handler.request_streaming or not method.startswith(_CRI_PREFIX):
            return handler
        record = self.duration.record
        clock = time.perf_counter
        attributes = self._attributes

        if handler.response_streaming:
            stream = handler.unary_stream

            def unary_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                start = clock()
                failed: grpc.StatusCode | None = grpc.StatusCode.UNKNOWN
                try:
                    yield from stream(request, context)
                    failed = None
                except GeneratorExit:
                    failed = grpc.StatusCode.CANCELLED  # the client went away mid-stream
                    raise
                finally:
                    record(clock() - start, attributes(method, _code(context, failed)))

            return grpc.unary_stream_rpc_method_handler(
                unary_stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )

        unary = handler.unary_unary

        def unary_unary(request: Any, context: grpc.ServicerContext) -> Any:
            start = clock()
            failed: grpc.StatusCode | None = grpc.StatusCode.UNKNOWN
            try:
                response = unary(request, context)
                failed = None
                return response
            finally:
                record(clock() - start, attributes(method, _code(context, failed)))

        return grpc.unary_unary_rpc_method_handler(
            unary_unary,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _code(context: grpc.ServicerContext, failed: grpc.StatusCode | None) -> grpc.StatusCode | None:
    """The code the call ends with: as set on the context, else OK or ``failed``."""
    try:
        code: grpc.StatusCode | None = context.code()
    except (AttributeError, RuntimeError):
        code = None
    return code if code is not None else failed


def rpc_metrics_interceptor(
    meter_provider: MeterProvider | None, prometheus: PrometheusEndpoint | None = None
) -> RpcMetricsInterceptor | None:
    """The server's side of metrics: the RPC interceptor (None when metrics are off).

    ``prometheus`` is only here so that the scrape endpoint starts with the
    server (and not with ``crishim pull`` or ``crishim images``).
    """
    return RpcMetricsInterceptor(meter_provider) if meter_provider is not None else None
