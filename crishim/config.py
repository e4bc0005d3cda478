"""The config file: its schema, validated at start-up with clear errors.

Every error names the file, the key (``backends[1].options.path``) and the
reason, and the server does not start. Unknown keys are errors too: a
misspelt key silently ignored is a production incident waiting to happen.
"""

from __future__ import annotations

import grp
import os
import re
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from crishim import reference
from crishim.model import Platform, host_platform

MiB = 1024 * 1024
DEFAULT_MESSAGE_SIZE = 16 * MiB
DEFAULT_LISTEN = "unix:///run/crishim/crishim.sock"
#: The status endpoint's socket, beside the CRI socket unless configured.
STATUS_SOCKET_NAME = "crishim-status.sock"
#: Where ``crishim serve`` (and every command taking ``--config``) reads its
#: config when given none: ``$CRISHIM_CONFIG``, else this file.
DEFAULT_CONFIG = "/etc/crishim/config.yaml"
CONFIG_ENV = "CRISHIM_CONFIG"
#: Longest path a unix socket address can hold on Linux (sun_path less the NUL).
MAX_SOCKET_PATH = 107
_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9_-]{0,62})$")
#: Key names whose values are never echoed in an error message.
SECRET_WORDS = ("password", "token", "secret", "auth", "credential", "key", "headers")
#: The pydantic validation context key holding the config file's directory;
#: set when options are validated for a config, so paths are checked.
PATH_CONTEXT = "crishim_config_dir"


def default_config_path() -> str:
    """``$CRISHIM_CONFIG`` if set, else /etc/crishim/config.yaml."""
    return os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG


def _check_path(value: str, info: ValidationInfo, *, directory: bool) -> str:
    base = (info.context or {}).get(PATH_CONTEXT)
    if base is None:  # validated outside a config file (tests, tools): not checked
        return value
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = Path(base) / path
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist") from None
    except OSError as exc:
        raise ValueError(f"{path}: {exc.strerror or exc}") from None
    if directory and not stat.S_ISDIR(st.st_mode):
        raise ValueError(f"{path} is not a directory")
    if not directory and stat.S_ISDIR(st.st_mode):
        raise ValueError(f"{path} is a directory, not a file")
    if not os.access(path, os.R_OK | (os.X_OK if directory else 0)):
        raise ValueError(f"{path} is not readable by this user")
    return value


def _existing_directory(value: str, info: ValidationInfo) -> str:
    return _check_path(value, info, directory=True)


def _existing_file(value: str, info: ValidationInfo) -> str:
    return _check_path(value, info, directory=False)


#: An option naming a directory that must exist (relative: to the config
#: file). Checked wherever a config's options are validated, so
#: ``check-config`` and ``serve`` report it alike; for plugin option models.
ExistingDirectory = Annotated[str, AfterValidator(_existing_directory)]
#: An option naming a file that must exist and be readable (relative: to the config file).
ExistingFile = Annotated[str, AfterValidator(_existing_file)]

#: A RuntimeClass handler is a DNS-1123 label (Kubernetes validates it so).
_HANDLER_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class ConfigError(Exception):
    """The config is wrong; ``str()`` is what an operator needs to fix it."""

    def __init__(self, path: str, problems: Sequence[tuple[str, str]]) -> None:
        self.path = path
        self.problems = list(problems)
        lines = [
            f"{path}: {key}: {reason}" if key else f"{path}: {reason}" for key, reason in problems
        ]
        super().__init__("\n".join(lines))

    @classmethod
    def combine(cls, errors: Sequence[ConfigError]) -> ConfigError:
        """One error holding the problems of several (of one file or another)."""
        first = errors[0]
        combined = cls(first.path, [p for e in errors for p in e.problems])
        combined.args = ("\n".join(str(e) for e in errors),)
        return combined

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Model):
    #: ``unix:///abs/path`` or ``unix://relative/path`` (relative to the config file).
    listen: str = DEFAULT_LISTEN
    #: Seconds in-flight calls get to finish after SIGTERM/SIGINT.
    grace_period: float = Field(default=10.0, ge=0, le=600)
    max_recv_message_size: int = Field(default=DEFAULT_MESSAGE_SIZE, ge=64 * 1024)
    max_send_message_size: int = Field(default=DEFAULT_MESSAGE_SIZE, ge=64 * 1024)
    #: StreamImages messages stay under this many bytes (and under half the
    #: send limit, whichever is smaller).
    stream_batch_bytes: int = Field(default=1024 * 1024, ge=1024)
    #: Threads serving calls; ImageStatus is answered from memory, so few suffice.
    workers: int = Field(default=4, ge=1, le=256)
    #: PullImage calls running at once; each has a thread of its own on top
    #: of ``workers``, so pulls never starve ImageStatus. More wait in a queue.
    max_concurrent_pulls: int = Field(default=4, ge=1, le=64)
    #: Pulls that may wait for a slot (first in, first out per registry,
    #: registries in turn); one more is refused with RESOURCE_EXHAUSTED.
    max_queued_pulls: int = Field(default=64, ge=0, le=1024)
    #: A pull queued or running longer than this many seconds is logged
    #: once, at INFO, with its progress.
    slow_pull_seconds: float = Field(default=60.0, gt=0)
    #: The status endpoint (``GET /pulls``, read by ``crishim pulls``):
    #: ``unix:///path`` (relative: to the config file); unset: beside the CRI
    #: socket as ``crishim-status.sock``; ``""``: none.
    status_listen: str | None = None
    #: Mode of the socket file.
    socket_mode: int = 0o660
    #: Group (name or number) the socket file is given, so a non-root
    #: kubelet in that group can connect; unset: the process's group.
    socket_group: str | int | None = None

    @field_validator("socket_group")
    @classmethod
    def _group(cls, value: str | int | None) -> str | int | None:
        if value is None:
            return None
        if isinstance(value, int) or value.isdigit():
            gid = int(value)
            if not 0 <= gid < 2**32 - 1:
                raise ValueError(f"group ID {gid} is out of range")
            return gid
        try:
            grp.getgrnam(value)
        except KeyError:
            raise ValueError(f"no group named {value!r} on this host") from None
        return value

    @property
    def socket_gid(self) -> int | None:
        """The numeric group of ``socket_group``, or None."""
        group = self.socket_group
        if group is None or isinstance(group, int):
            return group
        return grp.getgrnam(group).gr_gid

    @field_validator("socket_mode", mode="before")
    @classmethod
    def _octal(cls, value: object) -> object:
        # YAML reads 0660 as octal but 0o660 as a string; accept both spellings
        if isinstance(value, str):
            try:
                return int(value.removeprefix("0o").removeprefix("0O"), 8)
            except ValueError:
                raise ValueError("must be an octal file mode such as 0o660") from None
        return value

    @field_validator("socket_mode")
    @classmethod
    def _mode_range(cls, value: int) -> int:
        if not 0 <= value <= 0o777:
            raise ValueError("must be a file mode between 0o000 and 0o777")
        return value

    @field_validator("status_listen")
    @classmethod
    def _status_unix(cls, value: str | None) -> str | None:
        if value:
            return cls._unix_only(value)
        return value

    @field_validator("listen")
    @classmethod
    def _unix_only(cls, value: str) -> str:
        if not value.startswith("unix://") or value == "unix://":
            raise ValueError(
                "must be a unix socket address such as unix:///run/crishim/crishim.sock"
            )
        return value


class LoggingSettings(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    #: console: human-readable with timestamps; journal: systemd priority
    #: prefixes and no timestamps (journald adds them); json: one object a line.
    format: Literal["console", "journal", "json"] = "console"


class PlatformSettings(_Model):
    os: str | None = None
    architecture: str | None = None
    variant: str | None = None

    def resolve(self) -> Platform:
        host = host_platform()
        if self.architecture is None:
            return Platform(self.os or host.os, host.architecture, self.variant or host.variant)
        return Platform(self.os or host.os, self.architecture, self.variant or "")


class BackendSettings(_Model):
    name: str
    type: str
    enabled: bool = True
    options: dict[str, Any] = Field(default_factory=dict)
    #: Seconds a lookup, list or usage call may take; past it the backend's
    #: answer is given up (logged, the next backend asked). Unset: calls are
    #: direct, with no thread hand-off.
    timeout: float | None = Field(default=None, gt=0, le=600)
    #: The CRI runtime handlers (RuntimeClass handlers) this backend serves;
    #: ``""`` is the default handler, what calls without one ask for.
    runtime_handlers: list[str] = Field(default_factory=lambda: [""], min_length=1)
    #: The platform this backend resolves image indexes to, and so the
    #: platform of every handler it serves (unset: the top-level ``platform``).
    platform: PlatformSettings | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError(
                "must be 1-63 characters of a-z, 0-9, '-' and '_', starting with a letter or digit"
            )
        return value

    @field_validator("runtime_handlers")
    @classmethod
    def _handlers(cls, values: list[str]) -> list[str]:
        for value in values:
            if value and not _HANDLER_RE.match(value):
                raise ValueError(
                    f"{value[:80]!r} is not a runtime handler name (a RuntimeClass handler: "
                    "1-63 characters of a-z, 0-9 and '-', or \"\" for the default handler)"
                )
        if len(set(values)) != len(values):
            raise ValueError("a runtime handler is listed twice")
        return values


class FilterSettings(_Model):
    name: str
    type: str
    enabled: bool = True
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return BackendSettings._name(value)


class PullPolicySettings(FilterSettings):
    #: Seconds one check may take; past it the pull is denied (UNAVAILABLE).
    timeout: Annotated[float, Field(gt=0)] = 10.0


class PluginSettings(_Model):
    #: Entry-point names of plugins not to load (also: CRISHIM_DISABLE_PLUGINS).
    disabled: list[str] = Field(default_factory=list)
    #: A plugin that fails to load stops start-up instead of being skipped.
    strict: bool = False


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


class _Export(_Model):
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


class BatchSettings(_Model):
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


class PrometheusSettings(_Model):
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


class Settings(_Model):
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


def backend_platform(settings: Settings, entry: BackendSettings) -> Platform:
    """The platform a backend resolves image indexes to: its own, else the top-level one."""
    return (entry.platform or settings.platform).resolve()


def handler_platform_problems(settings: Settings) -> list[tuple[str, str]]:
    """Config problems of runtime handlers: one served by backends of different platforms.

    A handler resolves image indexes to one platform, so the enabled
    backends serving it must agree on it.
    """
    first: dict[str, tuple[str, Platform]] = {}
    problems: list[tuple[str, str]] = []
    for i, entry in enumerate(settings.backends):
        if not entry.enabled:
            continue
        platform = backend_platform(settings, entry)
        for handler in entry.runtime_handlers:
            seen = first.setdefault(handler, (entry.name, platform))
            if seen[1] != platform:
                problems.append(
                    (
                        f"backends[{i}].runtime_handlers",
                        f"runtime handler {handler!r} is served by backend {seen[0]} for "
                        f"platform {seen[1]} and by {entry.name} for {platform}: a handler has "
                        "one platform (serve the other platform under a handler of its own)",
                    )
                )
    return problems


def _loc(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _is_secret(loc: Sequence[int | str]) -> bool:
    for part in loc:
        lowered = str(part).lower()
        if any(w in lowered for w in SECRET_WORDS) and not lowered.endswith("_file"):
            return True
    return False


def _echo(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _problems(exc: ValidationError, prefix: Sequence[int | str] = ()) -> list[tuple[str, str]]:
    problems = []
    for err in exc.errors(include_url=False):
        loc = [*prefix, *err["loc"]]
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        elif err["type"] == "missing":
            message = "required key is missing"
        elif err["type"] != "value_error" and not _is_secret(loc):
            # pydantic's own wording never says what it was given; a
            # value_error is ours and names the value where it helps
            message += f" (got {_echo(err['input'])})"
        problems.append((_loc(loc), message))
    return problems


def parse_settings(
    data: Any, *, source: str = "<memory>", base_dir: Path | None = None
) -> Settings:
    """Validate an already-loaded mapping; raises ConfigError."""
    if not isinstance(data, Mapping):
        raise ConfigError(source, [("", "the file must hold a mapping of settings")])
    try:
        settings = Settings.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(source, _problems(exc)) from None
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


M = TypeVar("M", bound=BaseModel)


def validate_options(
    settings: Settings, index: int, model: type[M], section: str = "backends"
) -> M:
    """Validate ``<section>[index].options`` with a type's model (section:
    ``backends``, ``filters`` or ``pull_policies``).

    Paths the model declares as :data:`ExistingDirectory` or
    :data:`ExistingFile` are checked against the file system, relative
    ones against the config file's directory.
    """
    sections: dict[str, Sequence[BackendSettings | FilterSettings]] = {
        "backends": settings.backends,
        "filters": settings.filters or [],
        "pull_policies": settings.pull_policies,
    }
    entries = sections[section]
    return check_options(
        settings.source, settings.base_dir, (section, index), entries[index].options, model
    )


def check_options(
    source: str, base_dir: Path, where: tuple[str, int], raw: Any, model: type[M]
) -> M:
    """Validate one entry's raw ``options`` as a config's (paths checked); raises ConfigError."""
    try:
        return model.model_validate(raw, context={PATH_CONTEXT: base_dir})
    except ValidationError as exc:
        raise ConfigError(source, _problems(exc, (*where, "options"))) from None
