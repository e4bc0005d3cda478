"""What makes a config wrong beyond its schema's types, and how it is said.

:class:`ConfigError` holds every problem as (key, reason) and reads
``file: key: reason``; a pydantic error becomes such problems with the value
given named where it helps, never under a secret-sounding key. A plugin's
``options`` are validated with its type's model, with the paths it declares
as :data:`ExistingDirectory` or :data:`ExistingFile` checked against the
file system (relative ones against the config file's directory), so
``check-config`` and ``serve`` report them alike. Runtime handlers served for
two platforms are a problem too. :mod:`crishim.config` re-exports all of it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, ValidationError, ValidationInfo

from crishim.model import Platform

if TYPE_CHECKING:
    from crishim.config import BackendSettings, FilterSettings, Settings

#: Key names whose values are never echoed in an error message.
SECRET_WORDS = ("password", "token", "secret", "auth", "credential", "key", "headers")
#: The pydantic validation context key holding the config file's directory;
#: set when options are validated for a config, so paths are checked.
PATH_CONTEXT = "crishim_config_dir"


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


def _loc(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def is_secret(loc: Sequence[int | str]) -> bool:
    for part in loc:
        lowered = str(part).lower()
        if any(w in lowered for w in SECRET_WORDS) and not lowered.endswith("_file"):
            return True
    return False


def _echo(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def problems_of(exc: ValidationError, prefix: Sequence[int | str] = ()) -> list[tuple[str, str]]:
    problems = []
    for err in exc.errors(include_url=False):
        loc = [*prefix, *err["loc"]]
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        elif err["type"] == "missing":
            message = "required key is missing"
        elif err["type"] != "value_error" and not is_secret(loc):
            # pydantic's own wording never says what it was given; a
            # value_error is ours and names the value where it helps
            message += f" (got {_echo(err['input'])})"
        problems.append((_loc(loc), message))
    return problems


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
        raise ConfigError(source, problems_of(exc, (*where, "options"))) from None
