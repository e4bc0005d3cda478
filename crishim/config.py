"""The config file: its schema, validated at start-up with clear errors.

Every error names the file, the key (``backends[1].options.path``) and the
reason, and the server does not start. Unknown keys are errors too: a
misspelt key silently ignored is a production incident waiting to happen.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from crishim import reference
from crishim.model import Platform, host_platform

MiB = 1024 * 1024
DEFAULT_MESSAGE_SIZE = 16 * MiB
DEFAULT_LISTEN = "unix:///run/crishim/crishim.sock"
_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9_-]{0,62})$")


class ConfigError(Exception):
    """The config is wrong; ``str()`` is what an operator needs to fix it."""

    def __init__(self, path: str, problems: Sequence[tuple[str, str]]) -> None:
        self.path = path
        self.problems = list(problems)
        lines = [
            f"{path}: {key}: {reason}" if key else f"{path}: {reason}" for key, reason in problems
        ]
        super().__init__("\n".join(lines))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Model):
    #: ``unix:///abs/path`` or ``unix://relative/path`` (relative to the config file).
    listen: str = DEFAULT_LISTEN
    #: Seconds in-flight calls get to finish after SIGTERM/SIGINT.
    grace_period: float = Field(default=10.0, ge=0, le=600)
    max_recv_message_size: int = Field(default=DEFAULT_MESSAGE_SIZE, ge=64 * 1024)
    max_send_message_size: int = Field(default=DEFAULT_MESSAGE_SIZE, ge=64 * 1024)
    #: Threads serving calls; ImageStatus is answered from memory, so few suffice.
    workers: int = Field(default=4, ge=1, le=256)
    #: Mode of the socket file.
    socket_mode: int = 0o660

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

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError(
                "must be 1-63 characters of a-z, 0-9, '-' and '_', starting with a letter or digit"
            )
        return value


class PluginSettings(_Model):
    #: Entry-point names of plugins not to load (also: CRISHIM_DISABLE_PLUGINS).
    disabled: list[str] = Field(default_factory=list)
    #: A plugin that fails to load stops start-up instead of being skipped.
    strict: bool = False


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
    def state_path(self) -> Path:
        path = Path(self.state_dir).expanduser()
        return path if path.is_absolute() else (self.base_dir / path).resolve()

    def with_listen(self, listen: str) -> Settings:
        server = self.server.model_copy(update={"listen": ServerSettings._unix_only(listen)})
        return self.model_copy(update={"server": server})


def _loc(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _problems(exc: ValidationError, prefix: Sequence[int | str] = ()) -> list[tuple[str, str]]:
    problems = []
    for err in exc.errors(include_url=False):
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        elif err["type"] == "missing":
            message = "required key is missing"
        problems.append((_loc([*prefix, *err["loc"]]), message))
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
    return settings.model_copy(update={"source": source, "base_dir": base_dir or Path.cwd()})


def load_settings(path: str | Path) -> Settings:
    """Read, parse and validate a YAML config file; raises ConfigError."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(p), [("", f"cannot read: {exc.strerror or exc}")]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(str(p), [("", f"not valid YAML: {where}{problem}")]) from None
    return parse_settings(data, source=str(p), base_dir=p.resolve().parent)


M = TypeVar("M", bound=BaseModel)


def validate_options(settings: Settings, index: int, model: type[M]) -> M:
    """Validate ``backends[index].options`` with a backend type's model."""
    raw = settings.backends[index].options
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(settings.source, _problems(exc, ("backends", index, "options"))) from None
