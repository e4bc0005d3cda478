"""The config file's sections below the top level, but for telemetry's.

``server``, ``logging``, ``platform``, and one entry of ``backends``,
``filters``, ``pull_policies``; ``plugins``. Each is a frozen pydantic model
that refuses unknown keys. :class:`crishim.config.Settings` puts them
together (with the ``tracing`` and ``metrics`` sections) and
:mod:`crishim.config` re-exports every name here.
"""

from __future__ import annotations

import grp
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from crishim.model import Platform, host_platform

MiB = 1024 * 1024
DEFAULT_MESSAGE_SIZE = 16 * MiB
DEFAULT_LISTEN = "unix:///run/crishim/crishim.sock"
#: The status endpoint's socket, beside the CRI socket unless configured.
STATUS_SOCKET_NAME = "crishim-status.sock"
#: Longest path a unix socket address can hold on Linux (sun_path less the NUL).
MAX_SOCKET_PATH = 107

_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9_-]{0,62})$")

_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9_-]{0,62})$")
#: A RuntimeClass handler is a DNS-1123 label (Kubernetes validates it so).
_HANDLER_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class ConfigModel(BaseModel):
    """A config section: frozen, and a key it does not know is an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(ConfigModel):
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


class LoggingSettings(ConfigModel):
    level: Literal["debug", "info", "warning", "error"] = "info"
    #: console: human-readable with timestamps; journal: systemd priority
    #: prefixes and no timestamps (journald adds them); json: one object a line.
    format: Literal["console", "journal", "json"] = "console"


class PlatformSettings(ConfigModel):
    os: str | None = None
    architecture: str | None = None
    variant: str | None = None

    def resolve(self) -> Platform:
        host = host_platform()
        if self.architecture is None:
            return Platform(self.os or host.os, host.architecture, self.variant or host.variant)
        return Platform(self.os or host.os, self.architecture, self.variant or "")


class BackendSettings(ConfigModel):
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


class FilterSettings(ConfigModel):
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


class PluginSettings(ConfigModel):
    #: Entry-point names of plugins not to load (also: CRISHIM_DISABLE_PLUGINS).
    disabled: list[str] = Field(default_factory=list)
    #: A plugin that fails to load stops start-up instead of being skipped.
    strict: bool = False
