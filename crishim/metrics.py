"""Moved to :mod:`crishim.telemetry.metrics`: these names are kept for one release."""

from __future__ import annotations

from crishim.telemetry.metrics import (
    BACKEND_CALLS,
    DURATION_BUCKETS,
    RPC_DURATION,
    EndpointError,
    MetricsSetup,
    PrometheusEndpoint,
    PrometheusReader,
    RpcMetricsInterceptor,
    backend_calls_counter,
    make_metric_readers,
    make_prometheus_reader,
    meter_provider_resource,
    prometheus_endpoint_resource,
    resolve_metrics,
    rpc_metrics_interceptor,
)

__all__ = [
    "BACKEND_CALLS",
    "DURATION_BUCKETS",
    "RPC_DURATION",
    "EndpointError",
    "MetricsSetup",
    "PrometheusEndpoint",
    "PrometheusReader",
    "RpcMetricsInterceptor",
    "backend_calls_counter",
    "make_metric_readers",
    "make_prometheus_reader",
    "meter_provider_resource",
    "prometheus_endpoint_resource",
    "resolve_metrics",
    "rpc_metrics_interceptor",
]
