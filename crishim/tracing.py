"""Traces: one span per RPC, one child span per plugin call, exported over OTLP.

What lives here (see docs/tracing.md for the operator's view):

* :func:`resolve_tracing` turns the config's ``tracing`` section and the
  standard ``OTEL_*`` variables into one :class:`TracingSetup` (the config
  file wins where both speak); ``crishim check-config`` prints it.
* :func:`tracer_provider_resource` builds the SDK tracer provider (batch
  processor, sampler, resource) as a dependency-injector resource whose
  shutdown flushes the batch; it yields None when tracing is off, and then
  nothing else here is installed: no server interceptor, no plugin spans.
* :func:`server_interceptors`: the OpenTelemetry gRPC server interceptor
  (``opentelemetry-instrumentation-grpc``) given our provider explicitly.
* :class:`PluginTelemetry`: what the catalog wraps each plugin call in (a
  child span saying which plugin, hit/miss/error; a hit/miss/error count).
* :func:`note_reference`, :func:`note_answer`, :func:`note_answers`,
  :func:`record_error`: one-line helpers for the servicer; with tracing off
  they return on a global counter.
* :class:`SpanEncoder`: OTLP encoding for the gRPC exporter, quicker than
  the SDK's.
* :func:`step`, :func:`safe_url`: helpers for plugins that want spans of
  their own (OpenTelemetry API only).

Never put credentials, auth headers or URL query strings in an attribute,
an event or a status message; :func:`safe_url` strips them from URLs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from crishim import __version__
from crishim.config import ConfigError, TracingSettings

if TYPE_CHECKING:
    from opentelemetry.metrics import Counter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.sdk.trace.sampling import Sampler

    from crishim.model import Answer
    from crishim.reference import Reference

log = logging.getLogger(__name__)
T = TypeVar("T")

#: The instrumentation scope of crishim's own spans.
SCOPE = "crishim"
#: The gRPC service whose calls are traced and measured (not the health service).
CRI_SERVICE = "runtime.v1.ImageService"

# -- attribute names -----------------------------------------------------------------------

#: The image reference exactly as the caller sent it (clipped to 512 characters).
ATTR_REFERENCE = "crishim.image.reference"
#: The reference normalised (``docker.io/library/busybox:latest``, a full ID, an ID prefix).
ATTR_NORMALIZED = "crishim.image.normalized"
#: The image ID (config digest) of the image found.
ATTR_IMAGE_ID = "crishim.image.id"
#: Whether the image was found (ImageStatus, RemoveImage).
ATTR_FOUND = "crishim.image.found"
#: How many images a list answered.
ATTR_IMAGE_COUNT = "crishim.image.count"
#: The configured name of the backend that answered (server span).
ATTR_BACKEND = "crishim.backend.name"
#: The configured name of the backend or filter a plugin span calls.
ATTR_PLUGIN_NAME = "crishim.plugin.name"
#: Its type (``oci-dir``, ``embedded-filter``).
ATTR_PLUGIN_TYPE = "crishim.plugin.type"
#: backend or filter.
ATTR_PLUGIN_KIND = "crishim.plugin.kind"
#: The plugin method called: get_image, match_id_prefix, list_images, pull_image, ...
ATTR_OPERATION = "crishim.plugin.operation"
#: Backends: hit (answered something), miss (nothing) or error (raised).
#: Filters: visible, hidden or error.
ATTR_OUTCOME = "crishim.plugin.outcome"

OUTCOME_HIT = "hit"
OUTCOME_MISS = "miss"
OUTCOME_ERROR = "error"
OUTCOME_VISIBLE = "visible"
OUTCOME_HIDDEN = "hidden"
OUTCOME_ALLOWED = "allowed"
OUTCOME_DENIED = "denied"
_OUTCOMES = (
    OUTCOME_HIT,
    OUTCOME_MISS,
    OUTCOME_ERROR,
    OUTCOME_VISIBLE,
    OUTCOME_HIDDEN,
    OUTCOME_ALLOWED,
    OUTCOME_DENIED,
)

_MAX_REFERENCE = 512
#: Set on an exception once a span recorded it, so enclosing spans do not again.
_RECORDED = "_crishim_span_recorded"

ENV_SOURCE = "environment"

#: How many tracer providers are live in this process. While none is, the
#: servicer's helpers return at once: with tracing off they cost a global
#: lookup, not a context lookup.
_live_providers = 0

# -- the effective setup -------------------------------------------------------------------

_SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
_DEFAULT_GRPC_ENDPOINT = "http://localhost:4317"
_DEFAULT_HTTP_BASE = "http://localhost:4318"


def env_true(environ: Mapping[str, str], name: str) -> bool:
    return environ.get(name, "").strip().lower() == "true"


@dataclass(frozen=True)
class ExportSetup:
    """Where one signal goes: shared by traces and metrics."""

    #: none, console, otlp-grpc or otlp-http.
    exporter: str
    #: Where each value came from, for check-config: "config", an env var name or "default".
    exporter_from: str
    #: The full endpoint URL (otlp-http: with the signal path); empty unless OTLP.
    endpoint: str = ""
    endpoint_from: str = ""
    #: Header names and values; values are secrets and never shown.
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    timeout: float | None = None
    service_name: str = "crishim"
    #: Why the signal is off when it is ("" when on).
    off_reason: str = ""

    @property
    def enabled(self) -> bool:
        return not self.off_reason

    def describe_export(self) -> str:
        """``otlp-grpc to http://127.0.0.1:4317 (headers: authorization=<hidden>)``."""
        if self.exporter in ("otlp-grpc", "otlp-http"):
            text = f"{self.exporter} to {safe_url(self.endpoint)}"
            details = [f"exporter from {self.exporter_from}", f"endpoint from {self.endpoint_from}"]
            if self.headers:
                details.append(
                    "headers " + ", ".join(f"{k}=<hidden>" for k in sorted(self.headers))
                )
            if self.timeout is not None:
                details.append(f"timeout {self.timeout:g}s")
            return f"{text} ({'; '.join(details)})"
        return f"{self.exporter} (exporter from {self.exporter_from})"


@dataclass(frozen=True)
class TracingSetup(ExportSetup):
    """The tracing configuration in force, after config and environment."""

    sampler: str = "parentbased_always_on"
    sampler_from: str = "default"
    sampler_arg: float = 1.0
    max_queue_size: int = 2048
    schedule_delay: float = 5.0
    max_export_batch_size: int = 512
    export_timeout: float = 30.0

    def describe(self) -> str:
        """One line for ``crishim check-config``."""
        if not self.enabled:
            return f"off ({self.off_reason})"
        sampler = self.sampler
        if "ratio" in sampler:
            sampler += f" {self.sampler_arg:g}"
        return (
            f"on: {self.describe_export()}; sampler {sampler} (from {self.sampler_from}); "
            f"service.name {self.service_name}; batch every {self.schedule_delay:g}s, "
            f"up to {self.max_export_batch_size} spans, queue {self.max_queue_size}"
        )


def _exporter_choice(
    configured: str | None, environ: Mapping[str, str], signal: str, source: str
) -> tuple[str, str]:
    """The exporter (none/console/otlp-grpc/otlp-http) and where it came from."""
    if configured is not None:
        return configured, "config"
    var = f"OTEL_{signal.upper()}_EXPORTER"
    raw = environ.get(var, "").strip().lower()
    if not raw:
        return "none", "default"
    names = [n.strip() for n in raw.split(",") if n.strip()]
    if len(names) != 1:
        raise ConfigError(source, [(var, f"one exporter is supported, not {raw!r}")])
    name = names[0]
    if name in ("none", "console"):
        return name, var
    if name == "otlp":
        proto_var = f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL"
        if proto_var not in environ:
            proto_var = "OTEL_EXPORTER_OTLP_PROTOCOL"
        protocol = environ.get(proto_var, "grpc").strip().lower() or "grpc"
        if protocol == "grpc":
            return "otlp-grpc", var
        if protocol == "http/protobuf":
            return "otlp-http", f"{var} and {proto_var}"
        raise ConfigError(
            source, [(proto_var, f"protocol {protocol!r} is not supported: grpc or http/protobuf")]
        )
    if name == "prometheus" and signal == "metrics":
        return "none", var  # the scrape endpoint is not an exporter here; see resolve_metrics
    raise ConfigError(source, [(var, f"unknown exporter {name!r}: none, console or otlp")])


def _endpoint(
    exporter: str, configured: str | None, environ: Mapping[str, str], signal: str
) -> tuple[str, str]:
    """The full endpoint URL for an OTLP exporter and where it came from."""
    path = f"/v1/{signal}"
    signal_var = f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT"
    if configured is not None:
        url, source = configured, "config"
    elif environ.get(signal_var):
        # the signal-specific variable is the full URL, path included
        return environ[signal_var], signal_var
    elif environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        url, source = environ["OTEL_EXPORTER_OTLP_ENDPOINT"], "OTEL_EXPORTER_OTLP_ENDPOINT"
    else:
        url = _DEFAULT_GRPC_ENDPOINT if exporter == "otlp-grpc" else _DEFAULT_HTTP_BASE
        source = "default"
    if exporter == "otlp-http" and urlsplit(url).path in ("", "/"):
        url = url.rstrip("/") + path
    return url, source


def _headers(
    configured: Mapping[str, str], environ: Mapping[str, str], signal: str
) -> dict[str, str]:
    from opentelemetry.util.re import parse_env_headers

    headers: dict[str, str] = {}
    for var in ("OTEL_EXPORTER_OTLP_HEADERS", f"OTEL_EXPORTER_OTLP_{signal.upper()}_HEADERS"):
        if environ.get(var):
            headers.update(
                {k.lower(): v for k, v in parse_env_headers(environ[var], liberal=True).items()}
            )
    headers.update(configured)
    return headers


def _float_env(
    environ: Mapping[str, str], var: str, source: str, scale: float = 1.0
) -> float | None:
    raw = environ.get(var, "").strip()
    if not raw:
        return None
    try:
        return float(raw) * scale
    except ValueError:
        raise ConfigError(source, [(var, f"not a number: {raw!r}")]) from None


def resolve_export(
    settings: Any,
    environ: Mapping[str, str],
    signal: str,
    source: str = ENV_SOURCE,
) -> dict[str, Any]:
    """The fields of :class:`ExportSetup` for ``signal`` (traces or metrics)."""
    service_name = (
        settings.service_name or environ.get("OTEL_SERVICE_NAME", "").strip() or "crishim"
    )
    if env_true(environ, "OTEL_SDK_DISABLED"):
        return {
            "exporter": "none",
            "exporter_from": "OTEL_SDK_DISABLED",
            "service_name": service_name,
            "off_reason": "OTEL_SDK_DISABLED=true",
        }
    exporter, exporter_from = _exporter_choice(settings.exporter, environ, signal, source)
    fields: dict[str, Any] = {
        "exporter": exporter,
        "exporter_from": exporter_from,
        "service_name": service_name,
    }
    if exporter in ("otlp-grpc", "otlp-http"):
        endpoint, endpoint_from = _endpoint(exporter, settings.endpoint, environ, signal)
        timeout = settings.timeout
        if timeout is None:
            timeout = _float_env(
                environ, f"OTEL_EXPORTER_OTLP_{signal.upper()}_TIMEOUT", source, 0.001
            ) or _float_env(environ, "OTEL_EXPORTER_OTLP_TIMEOUT", source, 0.001)
        fields.update(
            endpoint=endpoint,
            endpoint_from=endpoint_from,
            headers=_headers(settings.headers, environ, signal),
            timeout=timeout,
        )
    return fields


def resolve_tracing(
    settings: TracingSettings | None = None, environ: Mapping[str, str] | None = None
) -> TracingSetup:
    """The tracing setup from the config section and ``OTEL_*`` (config wins)."""
    settings = settings if settings is not None else TracingSettings()
    env = os.environ if environ is None else environ
    fields = resolve_export(settings, env, "traces")
    if not fields.get("off_reason") and fields["exporter"] == "none":
        fields["off_reason"] = f"exporter none, from {fields['exporter_from']}"
    sampler: str | None = settings.sampler
    sampler_from = "config"
    if sampler is None:
        sampler = env.get("OTEL_TRACES_SAMPLER", "").strip().lower()
        sampler_from = "OTEL_TRACES_SAMPLER"
        if not sampler:
            sampler, sampler_from = "parentbased_always_on", "default"
        elif sampler not in _SAMPLERS:
            raise ConfigError(
                ENV_SOURCE,
                [("OTEL_TRACES_SAMPLER", f"unknown sampler {sampler!r}: {', '.join(_SAMPLERS)}")],
            )
    arg = settings.sampler_arg
    if arg is None:
        arg = _float_env(env, "OTEL_TRACES_SAMPLER_ARG", ENV_SOURCE)
        if arg is not None and not 0 <= arg <= 1:
            raise ConfigError(ENV_SOURCE, [("OTEL_TRACES_SAMPLER_ARG", "must be within 0..1")])
    batch = settings.batch
    return TracingSetup(
        **fields,
        sampler=sampler,
        sampler_from=sampler_from,
        sampler_arg=1.0 if arg is None else arg,
        max_queue_size=batch.max_queue_size,
        schedule_delay=batch.schedule_delay,
        max_export_batch_size=min(batch.max_export_batch_size, batch.max_queue_size),
        export_timeout=batch.export_timeout,
    )


# -- building the provider -----------------------------------------------------------------


def make_resource(service_name: str) -> Resource:
    """``service.name``, ``service.version``, ``host.name`` (+ OTEL_RESOURCE_ATTRIBUTES)."""
    from opentelemetry.sdk.resources import Resource

    return Resource.create(
        {
            "service.name": service_name,
            "service.version": __version__,
            "host.name": socket.gethostname(),
        }
    )


def make_sampler(setup: TracingSetup) -> Sampler:
    from opentelemetry.sdk.trace import sampling

    name, arg = setup.sampler, setup.sampler_arg
    samplers: dict[str, Callable[[], Sampler]] = {
        "always_on": lambda: sampling.ALWAYS_ON,
        "always_off": lambda: sampling.ALWAYS_OFF,
        "traceidratio": lambda: sampling.TraceIdRatioBased(arg),
        "parentbased_always_on": lambda: sampling.ParentBased(sampling.ALWAYS_ON),
        "parentbased_always_off": lambda: sampling.ParentBased(sampling.ALWAYS_OFF),
        "parentbased_traceidratio": lambda: sampling.ParentBasedTraceIdRatio(arg),
    }
    return samplers[name]()


def make_span_exporter(setup: TracingSetup) -> SpanExporter | None:
    """The exporter the setup names; None when tracing is off."""
    if not setup.enabled:
        return None
    if setup.exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter(service_name=setup.service_name)
    if setup.exporter == "otlp-grpc":
        return _fast_grpc_exporter(setup)
    if setup.exporter == "otlp-http":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpExporter,
        )

        return HttpExporter(
            endpoint=setup.endpoint, headers=dict(setup.headers) or None, timeout=setup.timeout
        )
    return None


def _fast_grpc_exporter(setup: TracingSetup) -> SpanExporter:
    """The SDK's OTLP/gRPC span exporter with :class:`SpanEncoder` doing the encoding."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    class Exporter(OTLPSpanExporter):
        encoder = SpanEncoder()

        def _translate_data(self, data: Sequence[Any]) -> Any:
            return self.encoder.encode(data)

    return Exporter(
        endpoint=setup.endpoint, headers=dict(setup.headers) or None, timeout=setup.timeout
    )


class SpanEncoder:
    """Spans to an OTLP ``ExportTraceServiceRequest``, several times faster than the SDK's.

    The message is the one ``encode_spans`` of ``opentelemetry-exporter-otlp-
    proto-common`` builds (tests/test_tracing.py compares them); the time
    goes into building one ``KeyValue`` per attribute per span, and most
    attributes repeat on every span (the RPC's, the plugin's, the image's),
    so their encoded form is kept (up to :attr:`MAX_CACHED` of them, then
    the cache starts over) and reused. Resources and scopes are encoded once.
    One encoder serves one export thread (the batch processor's).
    """

    MAX_CACHED = 4096

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
        from opentelemetry.proto.common.v1 import common_pb2
        from opentelemetry.proto.resource.v1 import resource_pb2

        self._pb_request: Any = trace_service_pb2.ExportTraceServiceRequest
        self._pb_kv: Any = common_pb2.KeyValue
        self._pb_any: Any = common_pb2.AnyValue
        self._pb_scope: Any = common_pb2.InstrumentationScope
        self._pb_resource: Any = resource_pb2.Resource
        self._kinds = {kind: kind.value + 1 for kind in SpanKind}
        self._values: dict[tuple[str, type, Any], Any] = {}
        self._resources: dict[int, tuple[Any, Any]] = {}
        self._scopes: dict[int, tuple[Any, Any]] = {}

    def _value(self, value: Any) -> Any:
        any_value = self._pb_any
        if value is None:
            return any_value()
        if isinstance(value, bool):
            return any_value(bool_value=value)
        if isinstance(value, str):
            return any_value(string_value=value)
        if isinstance(value, int):
            return any_value(int_value=value)
        if isinstance(value, float):
            return any_value(double_value=value)
        if isinstance(value, bytes):
            return any_value(bytes_value=value)
        if isinstance(value, Sequence):
            from opentelemetry.proto.common.v1 import common_pb2

            return any_value(
                array_value=common_pb2.ArrayValue(values=[self._value(v) for v in value])
            )
        if isinstance(value, Mapping):
            from opentelemetry.proto.common.v1 import common_pb2

            return any_value(kvlist_value=common_pb2.KeyValueList(values=self._attributes(value)))
        raise TypeError(f"attribute value of type {type(value).__name__}")

    def _attributes(self, attributes: Mapping[str, Any] | None) -> list[Any]:
        if not attributes:
            return []
        cache = self._values
        out = []
        # the SDK's BoundedAttributes iterates through the generic Mapping
        # machinery; its plain dict is several times quicker to walk
        for key, value in getattr(attributes, "_dict", attributes).items():
            try:
                kv = cache[(key, value.__class__, value)]
            except (KeyError, TypeError):
                kv = self._key_value(key, value)
                if kv is None:
                    continue
            out.append(kv)
        return out

    def _key_value(self, key: str, value: Any) -> Any:
        """Encode one attribute and keep it (unless its value is unhashable)."""
        try:
            kv = self._pb_kv(key=str(key), value=self._value(value))
        except TypeError:
            log.debug("attribute %s not exported: unsupported value type", key)
            return None
        cache = self._values
        try:
            ident = (key, value.__class__, value)
            hash(ident)
        except TypeError:
            return kv
        if len(cache) >= self.MAX_CACHED:
            cache.clear()
        cache[ident] = kv
        return kv

    def _resource(self, resource: Any) -> Any:
        found = self._resources.get(id(resource))
        if found is None or found[0] is not resource:
            found = (resource, self._pb_resource(attributes=self._attributes(resource.attributes)))
            self._resources[id(resource)] = found
        return found[1]

    def _scope(self, scope: Any) -> Any:
        found = self._scopes.get(id(scope))
        if found is None or found[0] is not scope:
            encoded = (
                self._pb_scope(
                    name=scope.name,
                    version=scope.version,
                    attributes=self._attributes(scope.attributes),
                )
                if scope is not None
                else self._pb_scope()
            )
            found = (scope, encoded)
            self._scopes[id(scope)] = found
        return found[1]

    def _span(self, add: Callable[..., Any], span: Any) -> None:
        """Build ``span`` in place in a ``ScopeSpans.spans`` (``add``): no copies."""
        ctx = span.context
        parent = span.parent
        flags = 0x100  # SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
        if parent is not None and parent.is_remote:
            flags |= 0x200  # SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
        trace_state = ctx.trace_state
        pb = add(
            trace_id=ctx.trace_id.to_bytes(16, "big"),
            span_id=ctx.span_id.to_bytes(8, "big"),
            trace_state=(
                ",".join(f"{k}={v}" for k, v in trace_state.items())
                if trace_state is not None
                else None
            ),
            parent_span_id=parent.span_id.to_bytes(8, "big") if parent else None,
            name=span.name,
            kind=self._kinds[span.kind],
            start_time_unix_nano=span.start_time,
            end_time_unix_nano=span.end_time,
            dropped_attributes_count=span.dropped_attributes,
            dropped_events_count=span.dropped_events,
            dropped_links_count=span.dropped_links,
            flags=flags,
        )
        pb.attributes.extend(self._attributes(span.attributes))
        status = span.status
        pb.status.SetInParent()
        if status.status_code.value:
            pb.status.code = status.status_code.value
        if status.description:
            pb.status.message = status.description
        for e in span.events:
            event = pb.events.add(
                name=e.name,
                time_unix_nano=e.timestamp,
                dropped_attributes_count=e.dropped_attributes,
            )
            event.attributes.extend(self._attributes(e.attributes))
        for link in span.links:
            lctx = link.context
            pb_link = pb.links.add(
                trace_id=lctx.trace_id.to_bytes(16, "big"),
                span_id=lctx.span_id.to_bytes(8, "big"),
                dropped_attributes_count=link.dropped_attributes,
                flags=0x100 | (0x200 if lctx.is_remote else 0),
            )
            pb_link.attributes.extend(self._attributes(link.attributes))

    def encode(self, spans: Sequence[Any]) -> Any:
        """The ``ExportTraceServiceRequest`` for SDK ``ReadableSpan`` objects."""
        # resource -> scope -> spans, in order of first appearance (as the SDK's)
        groups: dict[int, tuple[Any, dict[int, tuple[Any, list[Any]]]]] = {}
        for span in spans:
            resource, scope = span.resource, span.instrumentation_scope or None
            by_scope = groups.get(id(resource))
            if by_scope is None:
                by_scope = groups[id(resource)] = (resource, {})
            group = by_scope[1].get(id(scope))
            if group is None:
                group = by_scope[1][id(scope)] = (scope, [])
            group[1].append(span)
        request = self._pb_request()
        for resource, scopes in groups.values():
            resource_spans = request.resource_spans.add(schema_url=resource.schema_url)
            resource_spans.resource.CopyFrom(self._resource(resource))
            for scope, members in scopes.values():
                scope_spans = resource_spans.scope_spans.add(
                    schema_url=scope.schema_url if scope is not None else None
                )
                scope_spans.scope.CopyFrom(self._scope(scope))
                add = scope_spans.spans.add
                for span in members:
                    self._span(add, span)
        return request


def build_tracer_provider(setup: TracingSetup, exporter: SpanExporter) -> SdkTracerProvider:
    from opentelemetry.sdk.trace import TracerProvider as SdkProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = SdkProvider(sampler=make_sampler(setup), resource=make_resource(setup.service_name))
    provider.add_span_processor(
        BatchSpanProcessor(
            exporter,
            max_queue_size=setup.max_queue_size,
            schedule_delay_millis=setup.schedule_delay * 1000,
            max_export_batch_size=setup.max_export_batch_size,
            export_timeout_millis=setup.export_timeout * 1000,
        )
    )
    return provider


def tracer_provider_resource(
    setup: TracingSetup, exporter: SpanExporter | None
) -> Iterator[SdkTracerProvider | None]:
    """The tracer provider for the container's lifetime; None when tracing is off.

    A dependency-injector resource: ``app.shutdown_resources()`` shuts the
    provider down, which exports what the batch processor still holds.
    """
    if not setup.enabled or exporter is None:
        yield None
        return
    global _live_providers
    provider = build_tracer_provider(setup, exporter)
    log.info("tracing: %s", setup.describe())
    _live_providers += 1
    try:
        yield provider
    finally:
        _live_providers -= 1
        provider.shutdown()


# -- the server span -------------------------------------------------------------------------


class _ServerSpans(trace.TracerProvider):
    """The tracer provider the interceptor gets: our provider, two fixes.

    * The interceptor names its span after ``HandlerCallDetails.method``
      (``/runtime.v1.ImageService/ImageStatus``); the RPC semantic
      conventions (and kubelet's client spans) say
      ``runtime.v1.ImageService/ImageStatus``: the leading ``/`` goes.
    * ``context.abort()`` raises a bare ``Exception``, which the SDK would
      record as a second, empty exception event on every failed call; the
      servicer records the real error itself (:func:`record_error`), so the
      span's own exception recording is turned off.
    """

    def __init__(self, inner: trace.TracerProvider) -> None:
        self._inner = inner

    def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
        return _ServerSpanTracer(self._inner.get_tracer(*args, **kwargs))


class _ServerSpanTracer(trace.Tracer):
    def __init__(self, inner: trace.Tracer) -> None:
        self._inner = inner

    def start_span(self, name: str, *args: Any, **kwargs: Any) -> Span:
        kwargs["record_exception"] = False
        return self._inner.start_span(name.lstrip("/"), *args, **kwargs)

    def start_as_current_span(self, name: str, *args: Any, **kwargs: Any) -> Any:
        kwargs["record_exception"] = False
        return self._inner.start_as_current_span(name.lstrip("/"), *args, **kwargs)


_CRI_PREFIX = f"/{CRI_SERVICE}/"


def _is_cri_call(details: grpc.HandlerCallDetails) -> bool:
    # the instrumentation's own filters.service_name() costs ~10 µs a call
    # (isinstance against typing protocols, os.path); this is a prefix test
    return details.method.startswith(_CRI_PREFIX)  # type: ignore[no-any-return]


def server_interceptors(
    tracer_provider: trace.TracerProvider | None,
    rpc_metrics: grpc.ServerInterceptor | None = None,
) -> list[grpc.ServerInterceptor]:
    """The interceptors for the gRPC server: none at all when telemetry is off.

    The OpenTelemetry interceptor is outermost, so the RPC metrics (and
    everything the servicer does) run inside the server span.
    """
    interceptors: list[grpc.ServerInterceptor] = []
    if tracer_provider is not None:
        from opentelemetry.instrumentation.grpc import server_interceptor

        interceptor = server_interceptor(  # type: ignore[no-untyped-call]
            tracer_provider=_ServerSpans(tracer_provider),
            # CRI calls only: health checks are not worth a trace each
            filter_=_is_cri_call,
        )
        interceptors.append(interceptor)
    if rpc_metrics is not None:
        interceptors.append(rpc_metrics)
    return interceptors


# -- plugin spans (the catalog) ---------------------------------------------------------------


def _outcome(result: object) -> str:
    hidden = getattr(result, "hidden", None)  # a filter's Verdict
    if hidden is not None:
        return OUTCOME_HIDDEN if hidden else OUTCOME_VISIBLE
    allowed = getattr(result, "allowed", None)  # a pull policy's Decision
    if allowed is not None:
        return OUTCOME_ALLOWED if allowed else OUTCOME_DENIED
    if result is None:
        return OUTCOME_MISS
    if isinstance(result, Sequence) and not isinstance(result, str) and not result:
        return OUTCOME_MISS
    return OUTCOME_HIT


def _mark_recorded(exc: BaseException) -> None:
    with contextlib.suppress(AttributeError, TypeError):
        setattr(exc, _RECORDED, True)


def _is_recorded(exc: BaseException) -> bool:
    return getattr(exc, _RECORDED, False) or (
        exc.__cause__ is not None and getattr(exc.__cause__, _RECORDED, False)
    )


def fail_span(span: Span, exc: BaseException) -> None:
    """Mark ``span`` failed; the exception itself is recorded on one span only."""
    if not span.is_recording():
        return
    if not _is_recorded(exc):
        span.record_exception(exc)
        _mark_recorded(exc)
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


class PluginTelemetry:
    """Spans and counts for every plugin call; the catalog wraps calls in it.

    ``wrap`` returns a function that calls the plugin inside a child span of
    the span current where ``wrap`` was called (so a call moved to another
    thread still lands under its RPC) and counts the outcome.
    """

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        calls: Counter | None = None,
    ) -> None:
        self.tracer = (
            tracer_provider.get_tracer(SCOPE, __version__) if tracer_provider is not None else None
        )
        self.calls = calls
        self._attrs: dict[tuple[str, str, str, str], tuple[dict[str, str], dict[str, Any]]] = {}

    def _attributes(
        self, kind: str, name: str, type_: str, what: str
    ) -> tuple[dict[str, str], dict[str, Any]]:
        """Span attributes, and the count's attributes by outcome (made once)."""
        key = (kind, name, type_, what)
        found = self._attrs.get(key)
        if found is None:
            attrs = {
                ATTR_PLUGIN_KIND: kind,
                ATTR_PLUGIN_NAME: name,
                ATTR_PLUGIN_TYPE: type_,
                ATTR_OPERATION: what,
            }
            by_outcome = {outcome: {**attrs, ATTR_OUTCOME: outcome} for outcome in _OUTCOMES}
            found = self._attrs[key] = (attrs, by_outcome)
        return found

    def wrap(
        self,
        name: str,
        type_: str,
        what: str,
        fn: Callable[[Any], T],
        kind: str = "backend",
    ) -> Callable[[Any], T]:
        """``fn`` observed: a span named ``"<what> <name>"``, an outcome count."""
        tracer, calls = self.tracer, self.calls
        attrs, counted = self._attributes(kind, name, type_, what)
        parent = otel_context.get_current() if tracer is not None else None
        if tracer is not None:
            # a caller (kubelet, or our sampler) decided not to sample this
            # trace: no child span either (the parent-based samplers would
            # drop it anyway, after paying for it)
            caller = trace.get_current_span(parent).get_span_context()
            if caller.is_valid and not caller.trace_flags.sampled:
                tracer = None

        if tracer is None:
            if calls is None:
                return fn

            def counted_call(target: Any) -> T:
                outcome = OUTCOME_ERROR
                try:
                    result = fn(target)
                    outcome = _outcome(result)
                    return result
                finally:
                    calls.add(1, counted[outcome])

            return counted_call

        span_name = f"{what} {name}"

        def observed(target: Any) -> T:
            span = tracer.start_span(span_name, parent, kind=SpanKind.INTERNAL, attributes=attrs)
            token = otel_context.attach(trace.set_span_in_context(span, parent))
            outcome = OUTCOME_ERROR
            try:
                result = fn(target)
                outcome = _outcome(result)
                return result
            except BaseException as exc:
                fail_span(span, exc)
                raise
            finally:
                otel_context.detach(token)
                span.set_attribute(ATTR_OUTCOME, outcome)
                span.end()
                if calls is not None:
                    calls.add(1, counted[outcome])

        return observed


def plugin_telemetry(
    tracer_provider: trace.TracerProvider | None, calls: Counter | None
) -> PluginTelemetry | None:
    """What the catalog gets: None (no wrapping at all) when both signals are off."""
    if tracer_provider is None and calls is None:
        return None
    return PluginTelemetry(tracer_provider, calls)


# -- the servicer's helpers (cheap when the span is not recording) ---------------------------


def note_reference(text: str) -> None:
    """The reference as the caller sent it, on the RPC's span."""
    if not _live_providers:
        return
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute(ATTR_REFERENCE, text[:_MAX_REFERENCE])


def note_answer(ref: Reference, answer: Answer | None) -> None:
    """The normalised reference, the image ID and the backend that answered."""
    if not _live_providers:
        return
    span = trace.get_current_span()
    if span.is_recording():
        if answer is None:
            span.set_attributes({ATTR_NORMALIZED: str(ref)[:_MAX_REFERENCE], ATTR_FOUND: False})
        else:
            span.set_attributes(
                {
                    ATTR_NORMALIZED: str(ref)[:_MAX_REFERENCE],
                    ATTR_FOUND: True,
                    ATTR_IMAGE_ID: answer.record.id,
                    ATTR_BACKEND: answer.backend,
                }
            )


def note_answers(answers: Sequence[Answer]) -> None:
    """How many images a list answered."""
    if not _live_providers:
        return
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute(ATTR_IMAGE_COUNT, len(answers))


def record_error(exc: BaseException) -> None:
    """An error the RPC answers with, recorded on its span (once in the trace).

    The status itself is set by the interceptor from the gRPC code.
    """
    span = trace.get_current_span()
    if span.is_recording() and not _is_recorded(exc):
        span.record_exception(exc)
        _mark_recorded(exc)


# -- helpers for plugins (OpenTelemetry API only) ----------------------------------------------


def safe_url(url: str) -> str:
    """``url`` without user info, query string or fragment: safe for an attribute."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.hostname or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if port is not None:
        netloc = f"{netloc}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


@contextlib.contextmanager
def step(
    tracer: trace.Tracer, name: str, attributes: Mapping[str, Any] | None = None
) -> Iterator[Span]:
    """A span around one step: current while it runs, failed if it raises.

    The exception is recorded on this span only (enclosing crishim spans
    then just carry the error status).
    """
    with tracer.start_as_current_span(
        name, attributes=attributes, record_exception=False, set_status_on_exception=False
    ) as span:
        try:
            yield span
        except BaseException as exc:
            fail_span(span, exc)
            raise
