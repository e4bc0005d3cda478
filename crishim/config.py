"""The config file: its schema, validated at start-up with clear errors.

Every error names the file, the key (``backends[1].options.path``) and the
reason, and the server does not start. Unknown keys are errors too: a
misspelt key silently ignored is a production incident waiting to happen.

Here: the top level (:class:`Settings`), the telemetry sections, and
reading a file. The other sections are :mod:`crishim.config_sections`'s,
the errors and the checks beyond the schema (plugin options, paths,
handlers' platforms) :mod:`crishim.config_checks`'s; every name of both is
importable from here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, ValidationInfo, field_validator

from crishim import reference
from crishim.config_checks import (
    PATH_CONTEXT,
    SECRET_WORDS,
    ConfigError,
    ExistingDirectory,
    ExistingFile,
    backend_platform,
    check_options,
    handler_platform_problems,
    problems_of,
    validate_options,
)
from crishim.config_sections import (
    DEFAULT_LISTEN,
    DEFAULT_MESSAGE_SIZE,
    MAX_SOCKET_PATH,
    STATUS_SOCKET_NAME,
    BackendSettings,
    ConfigModel,
    FilterSettings,
    LoggingSettings,
    PlatformSettings,
    PluginSettings,
    PullPolicySettings,
    ServerSettings,
)

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG",
    "DEFAULT_LISTEN",
    "DEFAULT_MESSAGE_SIZE",
    "MAX_SOCKET_PATH",
    "PATH_CONTEXT",
    "SECRET_WORDS",
    "STATUS_SOCKET_NAME",
    "BackendSettings",
    "BatchSettings",
    "ConfigError",
    "ExistingDirectory",
    "ExistingFile",
    "FilterSettings",
    "LoggingSettings",
    "MetricsSettings",
    "PlatformSettings",
    "PluginSettings",
    "PrometheusSettings",
    "PullPolicySettings",
    "ServerSettings",
    "Settings",
    "TracingSettings",
    "backend_platform",
    "check_options",
    "command_line_socket",
    "default_config_path",
    "handler_platform_problems",
    "load_settings",
    "parse_settings",
    "read_config",
    "validate_options",
]

#: Where ``crishim serve`` (and every command taking ``--config``) reads its
#: config when given none: ``$CRISHIM_CONFIG``, else this file.
DEFAULT_CONFIG = "/etc/crishim/config.yaml"
CONFIG_ENV = "CRISHIM_CONFIG"


def default_config_path() -> str:
    """``$CRISHIM_CONFIG`` if set, else /etc/crishim/config.yaml."""
    return os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG


# -- telemetry (docs/tracing.md): a key left unset lets the OTEL_* variable speak --

Exporter = Literal["none", "console", "otlp-grpc", "otlp-http"]
Sampler = Literal[
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
]
_HEADER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class _Export(ConfigModel):
    #: none | console | otlp-grpc | otlp-http (unset: OTEL_TRACES_EXPORTER or
    #: OTEL_METRICS_EXPORTER with OTEL_EXPORTER_OTLP_PROTOCOL; else none).
    exporter: Exporter | None = None
    #: ``http[s]://host:port``; for otlp-http a bare URL gets ``/v1/traces``
    #: (``/v1/metrics``) appended. Unset: OTEL_EXPORTER_OTLP_*ENDPOINT.
    endpoint: str | None = None
    #: Sent with every export (e.g. an API key); merged over
    #: OTEL_EXPORTER_OTLP_*HEADERS. Values are never printed or logged.
    headers: dict[str, str] = Field(default_factory=dict)
    #: Seconds one export may take (unset: OTEL_EXPORTER_OTLP_*TIMEOUT, else 10).
    timeout: float | None = Field(default=None, gt=0, le=600)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is None:
            return value
        from urllib.parse import urlsplit

        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL such as http://127.0.0.1:4317")
        if parts.username is not None or parts.password is not None:
            raise ValueError("must not hold credentials: put them in headers")
        if parts.query or parts.fragment:
            raise ValueError("must not have a query string or fragment")
        return value

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not _HEADER_RE.match(name):
                raise ValueError(f"header name {name!r} is not a valid HTTP/gRPC header name")
        return {name.lower(): v for name, v in value.items()}


class BatchSettings(ConfigModel):
    """The batch span processor: spans are queued and exported in batches."""

    max_queue_size: int = Field(default=2048, ge=1)
    #: Seconds between two exports.
    schedule_delay: float = Field(default=5.0, gt=0, le=600)
    max_export_batch_size: int = Field(default=512, ge=1)
    #: Seconds an export may take before it is abandoned.
    export_timeout: float = Field(default=30.0, gt=0, le=600)


class TracingSettings(_Export):
    #: How spans are sampled (unset: OTEL_TRACES_SAMPLER, else
    #: parentbased_always_on: kubelet's decision is followed).
    sampler: Sampler | None = None
    #: The ratio of the *traceidratio samplers, 0..1 (unset: OTEL_TRACES_SAMPLER_ARG, else 1).
    sampler_arg: float | None = Field(default=None, ge=0, le=1)
    #: ``service.name`` (unset: OTEL_SERVICE_NAME, else crishim).
    service_name: str | None = None
    batch: BatchSettings = Field(default_factory=BatchSettings)


class PrometheusSettings(ConfigModel):
    """A Prometheus scrape endpoint (``GET /metrics``) served by crishim."""

    host: str = "127.0.0.1"
    #: 0 picks a free port (logged at start-up).
    port: int = Field(default=9464, ge=0, le=65535)


class MetricsSettings(_Export):
    #: Seconds between two pushes to the exporter (unset: OTEL_METRIC_EXPORT_INTERVAL, else 60).
    interval: float | None = Field(default=None, gt=0, le=3600)
    #: ``service.name`` (unset: OTEL_SERVICE_NAME, else crishim).
    service_name: str | None = None
    #: Also serve the metrics for scraping (independent of ``exporter``).
    prometheus: PrometheusSettings | None = None


class Settings(ConfigModel):
    server: ServerSettings = Field(default_factory=ServerSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    platform: PlatformSettings = Field(default_factory=PlatformSettings)
    #: Image names or patterns reported as pinned: exact references
    #: (normalised: ``busybox`` means ``docker.io/library/busybox:latest``)
    #: or a prefix ending in ``*`` matched against normalised names.
    pinned: list[str] = Field(default_factory=list)
    backends: Annotated[list[BackendSettings], Field(min_length=1)]
    #: Persistent state (index snapshots, stores); each backend instance
    #: gets ``<state_dir>/backends/<name>/``. Relative to the config file.
    state_dir: str = "/var/lib/crishim"
    plugins: PluginSettings = Field(default_factory=PluginSettings)
    #: Filters every image a backend returns passes, in this order. Absent:
    #: the default chain (filter types that declare themselves part of it,
    #: e.g. embedded-filter); ``[]``: no filters.
    filters: list[FilterSettings] | None = None
    #: Pull policies (docs/policies.md): every one must allow a pull, asked
    #: in this order before anything is fetched and again before the image
    #: is visible. Empty: every pull is allowed.
    pull_policies: list[PullPolicySettings] = Field(default_factory=list)
    #: A backend that raises or times out fails the call (INTERNAL) instead
    #: of costing only its own answer.
    fail_on_backend_error: bool = False
    #: OpenTelemetry traces and metrics (off unless configured; docs/tracing.md).
    tracing: TracingSettings = Field(default_factory=TracingSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)

    #: Where the file was read from; relative paths resolve against its directory.
    source: str = Field(default="<memory>", exclude=True)
    base_dir: Path = Field(default_factory=Path.cwd, exclude=True)

    @field_validator("pinned")
    @classmethod
    def _pinned(cls, values: list[str]) -> list[str]:
        out = []
        for value in values:
            if value.endswith("*"):
                if not value[:-1]:
                    raise ValueError("'*' alone would pin every image; list names or prefixes")
                out.append(value)
            else:
                try:
                    out.append(reference.normalize_name(value))
                except reference.ReferenceError as exc:
                    raise ValueError(str(exc)) from exc
        return out

    @field_validator("filters", "pull_policies")
    @classmethod
    def _unique_names(cls, entries: list[FilterSettings] | None, info: ValidationInfo) -> Any:
        what = "filter" if info.field_name == "filters" else "pull policy"
        seen: set[str] = set()
        for entry in entries or ():
            if entry.name in seen:
                raise ValueError(f"{what} name {entry.name!r} is used twice")
            seen.add(entry.name)
        return entries

    @field_validator("backends")
    @classmethod
    def _unique_backend_names(cls, backends: list[BackendSettings]) -> list[BackendSettings]:
        seen: set[str] = set()
        for backend in backends:
            if backend.name in seen:
                raise ValueError(f"backend name {backend.name!r} is used twice")
            seen.add(backend.name)
        return backends

    @property
    def socket_path(self) -> Path:
        raw = self.server.listen.removeprefix("unix://")
        path = Path(raw).expanduser()
        return path if path.is_absolute() else (self.base_dir / path).resolve()

    @property
    def status_socket_path(self) -> Path | None:
        """Where the status endpoint listens (None: nowhere)."""
        listen = self.server.status_listen
        if listen is None:
            return self.socket_path.parent / STATUS_SOCKET_NAME
        if not listen:
            return None
        path = Path(listen.removeprefix("unix://")).expanduser()
        return path if path.is_absolute() else (self.base_dir / path).resolve()

    @property
    def state_path(self) -> Path:
        path = Path(self.state_dir).expanduser()
        return path if path.is_absolute() else (self.base_dir / path).resolve()

    def with_listen(self, listen: str, cwd: Path | None = None) -> Settings:
        """These settings listening on ``listen`` (a command-line address).

        A relative ``unix://path`` is relative to ``cwd`` (default: the
        working directory), as a path typed in a shell is; only the config
        file's own ``server.listen`` resolves against the file's directory.
        """
        listen = f"unix://{command_line_socket(listen, cwd)}"
        server = self.server.model_copy(update={"listen": listen})
        return self.model_copy(update={"server": server})


def command_line_socket(listen: str, cwd: Path | None = None) -> Path:
    """The socket a command-line ``unix://`` address names (relative: to ``cwd``)."""
    raw = Path(ServerSettings._unix_only(listen).removeprefix("unix://")).expanduser()
    path = raw if raw.is_absolute() else (cwd or Path.cwd()) / raw
    _check_socket_length(path)
    return path


def _check_socket_length(path: Path) -> None:
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise ValueError(f"socket path {path} is longer than {MAX_SOCKET_PATH} bytes")


def parse_settings(
    data: Any, *, source: str = "<memory>", base_dir: Path | None = None
) -> Settings:
    """Validate an already-loaded mapping; raises ConfigError."""
    if not isinstance(data, Mapping):
        raise ConfigError(source, [("", "the file must hold a mapping of settings")])
    try:
        settings = Settings.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(source, problems_of(exc)) from None
    settings = settings.model_copy(update={"source": source, "base_dir": base_dir or Path.cwd()})
    try:
        _check_socket_length(settings.socket_path)
    except ValueError as exc:
        raise ConfigError(source, [("server.listen", str(exc))]) from None
    return settings


def read_config(path: str | Path) -> Any:
    """The YAML document of a config file, not yet validated; raises ConfigError."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(str(p), [("", "is a directory, not a config file")])
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        hint = "does not exist (`crishim config default` prints a config to start from)"
        raise ConfigError(str(p), [("", hint)]) from None
    except OSError as exc:
        raise ConfigError(str(p), [("", f"cannot read: {exc.strerror or exc}")]) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(str(p), [("", f"not valid YAML: {where}{problem}")]) from None


def load_settings(path: str | Path) -> Settings:
    """Read, parse and validate a YAML config file; raises ConfigError."""
    p = Path(path)
    return parse_settings(read_config(p), source=str(p), base_dir=p.resolve().parent)
