"""The configured instances: backends, filters and pull policies built from their entries.

Each enabled entry of ``backends``, ``filters`` and ``pull_policies`` names
a type some plugin offers; its ``options`` are validated with the type's
model and the type's factory builds the instance. Every entry's problems
are collected, so one pass reports all of them (file, key, reason). The
container (:mod:`crishim.container`) calls these; nothing here knows
dependency-injector.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from opentelemetry import trace
from pydantic import ValidationError

from crishim import config as config_mod
from crishim.backend_calls import BackendHandle
from crishim.config import (
    BackendSettings,
    ConfigError,
    FilterSettings,
    PluginSettings,
    PullPolicySettings,
    Settings,
)
from crishim.filtering import FilterHandle
from crishim.manager import PluginError, PluginManager, load_plugins
from crishim.pinning import PinnedPolicy
from crishim.policies import PolicyChain, PolicyHandle
from crishim.pulls import PullBoard
from crishim.status import StatusEndpoint
from crishim.types import (
    Backend,
    BackendContext,
    BackendType,
    FilterContext,
    FilterType,
    ImagePolicy,
    PolicyContext,
    PullPolicy,
    PullPolicyType,
)

if TYPE_CHECKING:
    from crishim.telemetry.spans import PluginTelemetry

log = logging.getLogger("crishim.container")


_Entry = TypeVar("_Entry", BackendSettings, FilterSettings, PullPolicySettings)
_Kind = TypeVar("_Kind", BackendType, FilterType, PullPolicyType)

#: What each config section's entries are, for messages.
_WHAT = {"backends": "backend", "filters": "filter", "pull_policies": "pull policy"}


def _configured(
    settings: Settings,
    section: str,
    entries: Sequence[_Entry],
    types: Mapping[str, _Kind],
    problems: list[tuple[str, str]],
    validate: Callable[[int, _Kind], Any] | None = None,
    hint: Callable[[str], str] | None = None,
) -> Iterator[tuple[_Entry, _Kind, Any]]:
    """(entry, its type, its validated options) for each enabled entry of a section.

    An entry naming no installed type, or with invalid options, adds to
    ``problems`` and is skipped, so one pass reports every entry's problems.
    ``validate(i, type)`` replaces the config's own option check;
    ``hint(type_name)`` says which plugin left out may offer an unknown type
    (:meth:`crishim.manager.PluginManager.missing_type_hint`).
    """
    for i, entry in enumerate(entries):
        if not entry.enabled:
            continue
        kind = types.get(entry.type)
        if kind is None:
            known = ", ".join(sorted(types)) or "none"
            why = hint(entry.type) if hint is not None else ""
            problems.append(
                (
                    f"{section}[{i}].type",
                    f"unknown {_WHAT[section]} type {entry.type!r} (installed: {known})"
                    + (f"; {why}" if why else ""),
                )
            )
            continue
        try:
            if validate is not None:
                options = validate(i, kind)
            else:
                options = config_mod.validate_options(settings, i, kind.options_model, section)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        yield entry, kind, options


def build_backends(
    settings: Settings,
    plugins: PluginManager,
    tracer_provider: trace.TracerProvider | None = None,
    pinned: PinnedPolicy | None = None,
) -> list[BackendHandle]:
    """One instance per enabled ``backends[]`` entry, in config order."""
    types = plugins.backend_types()
    handles: list[BackendHandle] = []
    problems: list[tuple[str, str]] = config_mod.handler_platform_problems(settings)
    for entry, backend_type, options in _configured(
        settings, "backends", settings.backends, types, problems, hint=plugins.missing_type_hint
    ):
        context = BackendContext(
            name=entry.name,
            platform=config_mod.backend_platform(settings, entry),
            config_dir=settings.base_dir,
            state_dir=settings.state_path / "backends" / entry.name,
            tracer_provider=tracer_provider or trace.NoOpTracerProvider(),
            is_pinned=(pinned or PinnedPolicy(settings.pinned)).matches,
            runtime_handlers=tuple(entry.runtime_handlers),
        )
        backend: Backend = backend_type.factory(context, options)
        handles.append(
            BackendHandle(
                entry.name,
                entry.type,
                backend,
                timeout=entry.timeout,
                runtime_handlers=context.runtime_handlers,
            )
        )
    if problems:
        raise ConfigError(settings.source, problems)
    if not handles:
        raise ConfigError(settings.source, [("backends", "every backend is disabled")])
    if not any("" in h.runtime_handlers for h in handles):
        log.warning(
            "no backend serves the default runtime handler ''; calls that name no runtime "
            "handler (every call of a kubelet without RuntimeClassInImageCriApi) are "
            "INVALID_ARGUMENT"
        )
    return handles


def build_filters(settings: Settings, plugins: PluginManager) -> list[FilterHandle]:
    """One instance per enabled ``filters[]`` entry, in config order.

    Without a ``filters`` key: the default chain, one instance of every
    filter type that declares ``default_chain_options``, in name order.
    ``filters: []`` means no filters.
    """
    types = plugins.filter_types()
    default = settings.filters is None
    if settings.filters is None:
        entries = [
            FilterSettings(name=t.name, type=t.name, options=dict(t.default_chain_options))
            for t in sorted(types.values(), key=lambda t: t.name)
            if t.default_chain_options is not None
        ]
        if entries:
            log.debug("filters: the default chain: %s", ", ".join(e.name for e in entries))
    else:
        entries = settings.filters
    handles: list[FilterHandle] = []
    problems: list[tuple[str, str]] = []

    def chain_options(i: int, filter_type: FilterType) -> Any:
        try:
            return filter_type.options_model.model_validate(entries[i].options)
        except ValidationError as exc:
            raise PluginError(
                f"filter type {filter_type.name!r} ({filter_type.package or 'unknown package'}): "
                f"its default_chain_options are invalid: {exc}"
            ) from None

    for entry, filter_type, options in _configured(
        settings,
        "filters",
        entries,
        types,
        problems,
        chain_options if default else None,
        hint=plugins.missing_type_hint,
    ):
        context = FilterContext(name=entry.name, config_dir=settings.base_dir)
        handles.append(FilterHandle(entry.name, entry.type, filter_type.factory(context, options)))
    if problems:
        raise ConfigError(settings.source, problems)
    return handles


def build_policies(
    settings: Settings,
    plugins: PluginManager,
    telemetry: PluginTelemetry | None = None,
    tracer_provider: trace.TracerProvider | None = None,
) -> PolicyChain:
    """One instance per enabled ``pull_policies[]`` entry, in config order."""
    types = plugins.pull_policy_types()
    handles: list[PolicyHandle] = []
    problems: list[tuple[str, str]] = []
    for entry, policy_type, options in _configured(
        settings,
        "pull_policies",
        settings.pull_policies,
        types,
        problems,
        hint=plugins.missing_type_hint,
    ):
        context = PolicyContext(
            name=entry.name,
            config_dir=settings.base_dir,
            tracer_provider=tracer_provider or trace.NoOpTracerProvider(),
        )
        policy = policy_type.factory(context, options)
        if not isinstance(policy, PullPolicy | ImagePolicy):
            raise PluginError(
                f"pull policy type {entry.type!r} ({policy_type.package or 'unknown package'}): "
                f"its factory built a {type(policy).__name__}, which has neither "
                "check_request nor check_image"
            )
        handles.append(PolicyHandle(entry.name, entry.type, policy, entry.timeout))
    if problems:
        raise ConfigError(settings.source, problems)
    return PolicyChain(handles, telemetry, settings.server.workers)


def status_endpoint(path: Path | None, board: PullBoard, mode: int) -> StatusEndpoint | None:
    """The status endpoint over the pull board, or None when it is turned off."""
    if path is None:
        return None
    return StatusEndpoint(path, {"/pulls": board.snapshot}, mode)


def raw_option_problems(
    data: Any,
    source: str,
    base_dir: Path,
    strict_plugins: bool | None,
    found: list[tuple[str, str]],
) -> list[tuple[str, str]]:
    """Option problems of the entries of a config whose schema failed."""
    if not isinstance(data, Mapping):
        return []
    try:
        plugin_settings = PluginSettings.model_validate(data.get("plugins") or {})
    except Exception:
        plugin_settings = PluginSettings()
    try:
        plugins = load_plugins(
            disabled=plugin_settings.disabled,
            strict=plugin_settings.strict if strict_plugins is None else strict_plugins,
        )
        kinds: dict[str, Mapping[str, Any]] = {
            "backends": plugins.backend_types(),
            "filters": plugins.filter_types(),
            "pull_policies": plugins.pull_policy_types(),
        }
    except PluginError:
        return []  # said again, on its own, once the schema is fixed
    known = {key for key, _ in found}
    problems: list[tuple[str, str]] = []
    for section, types in kinds.items():
        entries = data.get(section)
        if not isinstance(entries, list):
            continue
        for i, entry in enumerate(entries):
            if not isinstance(entry, Mapping) or entry.get("enabled", True) is False:
                continue
            kind = types.get(entry.get("type"))  # type: ignore[arg-type]
            if kind is None:
                if isinstance(entry.get("type"), str) and f"{section}[{i}].type" not in known:
                    installed = ", ".join(sorted(types)) or "none"
                    what = _WHAT[section]
                    problems.append(
                        (
                            f"{section}[{i}].type",
                            f"unknown {what} type {entry['type']!r} (installed: {installed})",
                        )
                    )
                continue
            try:
                config_mod.check_options(
                    source, base_dir, (section, i), entry.get("options", {}), kind.options_model
                )
            except ConfigError as exc:
                problems.extend(p for p in exc.problems if p[0] not in known)
    return problems
