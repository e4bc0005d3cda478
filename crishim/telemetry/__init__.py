"""OpenTelemetry for crishim: a span per CRI call, a child span per plugin call, metrics.

* :mod:`crishim.telemetry.setup`: what the config file and the ``OTEL_*``
  variables put in effect (what ``crishim check-config`` prints), and the
  SDK tracer provider built from it. Values the file states are passed to
  the SDK explicitly; everything else is the SDK's own environment handling.
* :mod:`crishim.telemetry.spans`: the server span (a gRPC interceptor), the
  per-plugin child spans the catalog makes (:class:`~crishim.telemetry.spans.PluginTelemetry`),
  the attribute helpers the servicer calls.
* :mod:`crishim.telemetry.metrics`: RPC durations and plugin outcomes.
* :mod:`crishim.telemetry.otlp`: the OTLP/gRPC span exporter with a quicker encoder.

Only this package imports the OpenTelemetry SDK; plugins and the rest of
crishim use the API. Nothing here imports the server or the catalog.
"""

from __future__ import annotations

from crishim.cri_messages import IMAGE_SERVICE

#: The instrumentation scope of crishim's spans and instruments.
SCOPE = "crishim"
#: The gRPC service whose calls are traced and measured (not the health service).
CRI_SERVICE = IMAGE_SERVICE
#: What every traced method name starts with: ``/runtime.v1.ImageService/``.
CRI_PREFIX = f"/{CRI_SERVICE}/"

__all__ = ["CRI_PREFIX", "CRI_SERVICE", "SCOPE"]
