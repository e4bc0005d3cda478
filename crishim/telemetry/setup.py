"""What the config file and the ``OTEL_*`` variables put in effect, and the SDK built from it.

The rule (opentelemetry-python's own): a value the config file states is
passed to the SDK explicitly; everything it leaves unset is the SDK's to
read from the standard ``OTEL_*`` variables (``OTEL_EXPORTER_OTLP_*``,
``OTEL_TRACES_SAMPLER[_ARG]``, ``OTEL_BSP_*``, ``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_METRIC_EXPORT_INTERVAL``...), exactly as
it reads them for any program. What this module adds to the SDK:

* which exporter, if any: crishim exports **only when told to** (a
  ``tracing.exporter`` key or ``OTEL_TRACES_EXPORTER``), not by default as
  the specification's ``otlp`` default would have it (docs/tracing.md says
  why); an endpoint variable set with no exporter named is said so by
  ``check-config`` and logged;
* ``crishim check-config``'s account of what is in effect and where each part
  came from (:meth:`TracingSetup.describe`), and a start-up error, naming the
  variable, for a value the SDK would only log and replace by its default
  (an unknown sampler, a ratio out of 0..1, a number that is not one);
* ``OTEL_SDK_DISABLED=true``: nothing is installed at all.
"""

from __future__ import annotations

import logging
import os
import socket
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from crishim import __version__
from crishim.config import ConfigError, Sampler, TracingSettings
from crishim.telemetry import attributes

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.sdk.trace.sampling import Sampler as SdkSampler

log = logging.getLogger(__name__)

#: The source an error about an ``OTEL_*`` variable names.
ENV_SOURCE = "environment"
DEFAULT = "default"
_SAMPLERS: tuple[str, ...] = typing.get_args(Sampler)
#: Where the SDK sends OTLP when no endpoint is given (shown by check-config).
_SDK_ENDPOINTS = {"otlp-grpc": "http://localhost:4317", "otlp-http": "http://localhost:4318"}
#: The batch span processor's settings: config key, SDK argument, OTEL_BSP_
#: variable, the SDK's default, the scale from the config's unit (s) to the SDK's (ms).
_BATCH = (
    ("schedule_delay", "schedule_delay_millis", "OTEL_BSP_SCHEDULE_DELAY", 5000, 1000),
    ("max_export_batch_size", "max_export_batch_size", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512, 1),
    ("max_queue_size", "max_queue_size", "OTEL_BSP_MAX_QUEUE_SIZE", 2048, 1),
    ("export_timeout", "export_timeout_millis", "OTEL_BSP_EXPORT_TIMEOUT", 30000, 1000),
)


def env_true(environ: Mapping[str, str], name: str) -> bool:
    return environ.get(name, "").strip().lower() == "true"


def env_number(
    environ: Mapping[str, str],
    var: str,
    low: float = 0,
    high: float | None = None,
    integer: bool = False,
) -> float | None:
    """``var`` as a number, None when unset; a ConfigError naming it when it is no number.

    The SDK would log such a value and use its default; crishim does not start.
    """
    raw = environ.get(var, "").strip()
    if not raw:
        return None
    try:
        value = float(int(raw) if integer else raw)
    except ValueError:
        what = "an integer" if integer else "a number"
        raise ConfigError(ENV_SOURCE, [(var, f"not {what}: {raw!r}")]) from None
    if value < low or (high is not None and value > high):
        allowed = f"{low:g}..{high:g}" if high is not None else f"at least {low:g}"
        raise ConfigError(ENV_SOURCE, [(var, f"must be {allowed}, not {raw}")])
    return value


def origin(configured: Any, environ: Mapping[str, str], *names: str) -> tuple[Any, str]:
    """``(value, where from)``: the config's value, else the first variable set, else None."""
    if configured is not None:
        return configured, "config"
    for name in names:
        raw = environ.get(name, "").strip()
        if raw:
            return raw, name
    return None, DEFAULT


@dataclass(frozen=True)
class ExportSetup:
    """Where one signal goes (traces or metrics); what the file states, for the SDK."""

    signal: str
    #: none, console, otlp-grpc or otlp-http, and where that came from.
    exporter: str
    exporter_from: str
    #: The endpoint, headers, timeout and service.name the file states (the
    #: SDK is given these); None or empty: the SDK reads its variables.
    endpoint: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    timeout: float | None = None
    service_name: str | None = None
    #: What check-config says of the parts the SDK resolves: (text, where from).
    shown: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    #: Why the signal is off when it is ("" when on).
    off_reason: str = ""

    @property
    def enabled(self) -> bool:
        return not self.off_reason

    def _part(self, name: str, text: str | None = None) -> str:
        value, source = self.shown[name]
        return f"{text or value} (from {source})"

    def describe_export(self) -> str:
        """``otlp-grpc to http://127.0.0.1:4317 (exporter from config; ...)``."""
        if self.exporter not in ("otlp-grpc", "otlp-http"):
            return f"{self.exporter} (exporter from {self.exporter_from})"
        endpoint, endpoint_from = self.shown["endpoint"]
        details = [f"exporter from {self.exporter_from}", f"endpoint from {endpoint_from}"]
        headers, headers_from = self.shown["headers"]
        if headers:
            details.append(f"headers {headers} from {headers_from}")
        timeout, timeout_from = self.shown["timeout"]
        details.append(f"timeout {timeout} from {timeout_from}")
        return f"{self.exporter} to {endpoint} ({'; '.join(details)})"


def _exporter_choice(
    configured: str | None, environ: Mapping[str, str], signal: str
) -> tuple[str, str]:
    """The exporter (none/console/otlp-grpc/otlp-http) and where it came from."""
    if configured is not None:
        return configured, "config"
    var = f"OTEL_{signal.upper()}_EXPORTER"
    raw = environ.get(var, "").strip().lower()
    if not raw:
        return "none", DEFAULT
    names = [n.strip() for n in raw.split(",") if n.strip()]
    if len(names) != 1:
        raise ConfigError(ENV_SOURCE, [(var, f"one exporter is supported, not {raw!r}")])
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
            ENV_SOURCE,
            [(proto_var, f"protocol {protocol!r} is not supported: grpc or http/protobuf")],
        )
    if name == "prometheus" and signal == "metrics":
        return "none", var  # the scrape endpoint is not an exporter here; see resolve_metrics
    raise ConfigError(ENV_SOURCE, [(var, f"unknown exporter {name!r}: none, console or otlp")])


def _shown_endpoint(
    exporter: str, configured: str | None, environ: Mapping[str, str], signal: str
) -> tuple[str | None, tuple[str, str]]:
    """The endpoint URL for the SDK (the file's, else None) and what check-config shows.

    otlp-http: the file's URL gets ``/v1/<signal>`` when it has no path; the
    SDK adds it to ``OTEL_EXPORTER_OTLP_ENDPOINT`` always and uses the
    signal's own variable as it is.
    """
    signal_var = f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT"
    url, source = origin(configured, environ, signal_var, "OTEL_EXPORTER_OTLP_ENDPOINT")
    if url is None:
        url = _SDK_ENDPOINTS[exporter]
    bare = source != "config" or urlsplit(url).path in ("", "/")
    if exporter == "otlp-http" and source != signal_var and bare:
        url = url.rstrip("/") + f"/v1/{signal}"
    return (url if source == "config" else None), (attributes.safe_url(url), source)


def _shown_headers(
    configured: Mapping[str, str], environ: Mapping[str, str], signal: str
) -> tuple[str, str]:
    """The header names sent (never their values) and where they came from."""
    raw, source = origin(
        dict(configured) or None,
        environ,
        f"OTEL_EXPORTER_OTLP_{signal.upper()}_HEADERS",
        "OTEL_EXPORTER_OTLP_HEADERS",
    )
    if raw is None:
        return "", DEFAULT
    names = raw if isinstance(raw, dict) else [p.split("=", 1)[0] for p in raw.split(",") if p]
    return ", ".join(f"{n.strip().lower()}=<hidden>" for n in sorted(names)), source


def resolve_export(settings: Any, environ: Mapping[str, str], signal: str) -> dict[str, Any]:
    """The fields of :class:`ExportSetup` for ``signal`` (traces or metrics)."""
    shown: dict[str, tuple[str, str]] = {"service.name": _shown_service_name(settings, environ)}
    fields: dict[str, Any] = {
        "signal": signal,
        "service_name": settings.service_name,
        "shown": shown,
    }
    if env_true(environ, "OTEL_SDK_DISABLED"):
        return {
            **fields,
            "exporter": "none",
            "exporter_from": "OTEL_SDK_DISABLED",
            "off_reason": "OTEL_SDK_DISABLED=true",
        }
    exporter, exporter_from = _exporter_choice(settings.exporter, environ, signal)
    fields.update(exporter=exporter, exporter_from=exporter_from)
    upper = signal.upper()
    if exporter in ("otlp-grpc", "otlp-http"):
        endpoint, shown["endpoint"] = _shown_endpoint(exporter, settings.endpoint, environ, signal)
        shown["headers"] = _shown_headers(settings.headers, environ, signal)
        timeout_vars = (f"OTEL_EXPORTER_OTLP_{upper}_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT")
        for var in timeout_vars:
            env_number(environ, var)
        timeout, timeout_from = origin(settings.timeout, environ, *timeout_vars)
        # the Python SDK reads the timeout variables in seconds (the specification says ms)
        shown["timeout"] = (f"{float(timeout or 10):g}s", timeout_from)
        fields.update(endpoint=endpoint, headers=dict(settings.headers), timeout=settings.timeout)
    elif exporter == "none" and exporter_from == DEFAULT:
        section = "tracing" if signal == "traces" else signal
        for var in (f"OTEL_EXPORTER_OTLP_{upper}_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
            if environ.get(var, "").strip():
                fields["off_reason"] = (
                    f"no exporter named: {var} is set, but neither {section}.exporter nor "
                    f"OTEL_{upper}_EXPORTER names one; crishim exports only when told to "
                    f"(OTEL_{upper}_EXPORTER=otlp)"
                )
                break
    return fields


def _shown_service_name(settings: Any, environ: Mapping[str, str]) -> tuple[str, str]:
    """``service.name`` as :func:`make_resource` will have it, and where it came from."""
    name, source = origin(settings.service_name, environ, "OTEL_SERVICE_NAME")
    if name is None:
        for item in environ.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
            key, _, value = item.partition("=")
            if key.strip() == "service.name" and value.strip():
                name, source = value.strip(), "OTEL_RESOURCE_ATTRIBUTES"
    return name or "crishim", source


@dataclass(frozen=True)
class TracingSetup(ExportSetup):
    """The tracing configuration in force, after config and environment."""

    #: The sampler the file states (with its ratio), else None: the SDK reads
    #: OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG itself.
    sampler: str | None = None
    sampler_arg: float | None = None
    #: The batch processor's arguments the file states (and a batch size
    #: lowered to the queue's); the SDK reads OTEL_BSP_* for the others.
    batch: Mapping[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        """One line for ``crishim check-config``."""
        if not self.enabled:
            return f"off ({self.off_reason})"
        batch = ", ".join(
            self._part(key, text)
            for key, text in (
                ("schedule_delay", f"every {self.shown['schedule_delay'][0]}"),
                ("max_export_batch_size", f"up to {self.shown['max_export_batch_size'][0]} spans"),
                ("max_queue_size", f"queue {self.shown['max_queue_size'][0]}"),
                ("export_timeout", f"export timeout {self.shown['export_timeout'][0]}"),
            )
        )
        return (
            f"on: {self.describe_export()}; sampler {self._part('sampler')}; "
            f"service.name {self._part('service.name')}; batch {batch}"
        )


def resolve_tracing(
    settings: TracingSettings | None = None, environ: Mapping[str, str] | None = None
) -> TracingSetup:
    """The tracing setup from the config section and ``OTEL_*`` (config wins).

    The sampler and batch variables are checked even when tracing is off:
    a typo is reported before the day it would matter.
    """
    settings = settings if settings is not None else TracingSettings()
    env = os.environ if environ is None else environ
    fields = resolve_export(settings, env, "traces")
    if fields["exporter_from"] == "OTEL_SDK_DISABLED":
        return TracingSetup(**fields)
    sampler = _sampler(settings, env, fields["shown"])
    batch = _batch(settings, env, fields["shown"])
    if fields["exporter"] == "none" and not fields.get("off_reason"):
        fields["off_reason"] = f"exporter none, from {fields['exporter_from']}"
    return TracingSetup(**fields, sampler=sampler, sampler_arg=settings.sampler_arg, batch=batch)


def _sampler(
    settings: TracingSettings, env: Mapping[str, str], shown: dict[str, Any]
) -> str | None:
    """The sampler to build (None: the SDK reads its variables); what is shown of it."""
    name, name_from = origin(settings.sampler, env, "OTEL_TRACES_SAMPLER")
    name = (name or "parentbased_always_on").lower()
    if name not in _SAMPLERS:
        raise ConfigError(
            ENV_SOURCE,
            [("OTEL_TRACES_SAMPLER", f"unknown sampler {name!r}: {', '.join(_SAMPLERS)}")],
        )
    env_number(env, "OTEL_TRACES_SAMPLER_ARG", 0, 1)
    arg, _ = origin(settings.sampler_arg, env, "OTEL_TRACES_SAMPLER_ARG")
    shown["sampler"] = (f"{name} {float(arg or 1):g}" if "ratio" in name else name, name_from)
    # a ratio from the file for a sampler named by the variable: built here, with both
    stated = settings.sampler is not None or settings.sampler_arg is not None
    return name if stated else None


def _batch(
    settings: TracingSettings, env: Mapping[str, str], shown: dict[str, Any]
) -> dict[str, float]:
    """The batch processor's arguments the file states; what is shown of all four."""
    batch: dict[str, float] = {}
    effective: dict[str, float] = {}
    stated = settings.batch.model_fields_set
    for key, argument, var, default, scale in _BATCH:
        env_number(env, var, 1, integer=True)
        configured = getattr(settings.batch, key) * scale if key in stated else None
        value, source = origin(configured, env, var)
        effective[key] = float(value) if value is not None else default
        if configured is not None:
            batch[argument] = configured
        text = f"{effective[key] / 1000:g}s" if scale != 1 else f"{effective[key]:g}"
        shown[key] = (text, source)
    if effective["max_export_batch_size"] > effective["max_queue_size"]:
        # the SDK refuses a batch larger than its queue: a batch is then the queue
        batch["max_export_batch_size"] = int(effective["max_queue_size"])
        shown["max_export_batch_size"] = (f"{effective['max_queue_size']:g}", "the queue's size")
    return batch


# -- building the provider -----------------------------------------------------------------


def make_resource(service_name: str | None) -> Resource:
    """``service.name``, ``service.version``, ``host.name``, what ``OTEL_RESOURCE_ATTRIBUTES`` adds.

    ``service.name`` is the file's, else the SDK's (``OTEL_SERVICE_NAME``,
    ``OTEL_RESOURCE_ATTRIBUTES``), else ``crishim`` in place of the SDK's
    ``unknown_service``.
    """
    from opentelemetry.sdk.resources import Resource

    attributes = {"service.version": __version__, "host.name": socket.gethostname()}
    if service_name is not None:
        attributes["service.name"] = service_name
    resource = Resource.create(attributes)
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "crishim"}))
    return resource


def make_sampler(name: str, arg: float | None) -> SdkSampler:
    """The SDK sampler ``name`` (one of the config's), with its ratio."""
    from opentelemetry.sdk.trace import sampling

    ratio = 1.0 if arg is None else arg
    if name == "always_on":
        return sampling.ALWAYS_ON
    if name == "always_off":
        return sampling.ALWAYS_OFF
    if name == "traceidratio":
        return sampling.TraceIdRatioBased(ratio)
    if name == "parentbased_always_off":
        return sampling.ParentBased(sampling.ALWAYS_OFF)
    if name == "parentbased_traceidratio":
        return sampling.ParentBasedTraceIdRatio(ratio)
    return sampling.ParentBased(sampling.ALWAYS_ON)


def make_span_exporter(setup: TracingSetup) -> SpanExporter | None:
    """The exporter the setup names; None when tracing is off."""
    if not setup.enabled:
        return None
    if setup.exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter(service_name=setup.shown["service.name"][0])
    if setup.exporter == "otlp-grpc":
        from crishim.telemetry.otlp import grpc_span_exporter

        return grpc_span_exporter(setup.endpoint, setup.headers, setup.timeout)
    if setup.exporter == "otlp-http":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpExporter,
        )

        return HttpExporter(
            endpoint=setup.endpoint, headers=dict(setup.headers) or None, timeout=setup.timeout
        )
    return None


def build_tracer_provider(setup: TracingSetup, exporter: SpanExporter) -> SdkTracerProvider:
    """The SDK provider: the file's sampler and batch settings, the SDK's for the rest."""
    from opentelemetry.sdk.trace import TracerProvider as SdkProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    sampler = make_sampler(setup.sampler, setup.sampler_arg) if setup.sampler else None
    provider = SdkProvider(sampler=sampler, resource=make_resource(setup.service_name))
    provider.add_span_processor(BatchSpanProcessor(exporter, **setup.batch))  # type: ignore[arg-type]
    return provider


def tracer_provider_resource(
    setup: TracingSetup, exporter: SpanExporter | None
) -> Iterator[SdkTracerProvider | None]:
    """The tracer provider for the container's lifetime; None when tracing is off.

    A dependency-injector resource: ``app.shutdown_resources()`` shuts the
    provider down, which exports what the batch processor still holds.
    """
    if not setup.enabled or exporter is None:
        if setup.off_reason.startswith("no exporter named"):
            log.warning("tracing: off (%s)", setup.off_reason)
        yield None
        return
    provider = build_tracer_provider(setup, exporter)
    log.info("tracing: %s", setup.describe())
    attributes.provider_started()
    try:
        yield provider
    finally:
        attributes.provider_stopped()
        provider.shutdown()
