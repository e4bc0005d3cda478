"""For bench_tracing.py --sdk-encoder only: crishim's OTLP/gRPC exporter with the SDK's encoder.

On ``PYTHONPATH`` of a ``crishim serve`` process, this replaces
:func:`crishim.telemetry.otlp.grpc_span_exporter` with the SDK's own
exporter, unchanged, so one run measures what crishim's encoder saves.
"""

from collections.abc import Mapping

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

import crishim.telemetry.otlp


def _sdk_exporter(
    endpoint: str | None, headers: Mapping[str, str] | None, timeout: float | None
) -> OTLPSpanExporter:
    return OTLPSpanExporter(
        endpoint=endpoint, headers=dict(headers) if headers else None, timeout=timeout
    )


crishim.telemetry.otlp.grpc_span_exporter = _sdk_exporter
