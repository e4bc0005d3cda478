"""Finding plugins: the typed facade over pluggy.

Plugin types come from the entry-point group ``crishim.plugins`` (the
built-ins are registered there too, so the core never names one). Each
entry point is loaded on its own: one that fails to import is logged and
skipped unless ``strict`` is set. ``check_pending`` then rejects hook
implementations that match no hook (a misspelt name would otherwise be
ignored in silence).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import TypeVar, cast

import pluggy

from crishim import hookspecs
from crishim.types import BackendType, FilterType, PullPolicyType

log = logging.getLogger(__name__)
#: What a registering hook returns.
R = TypeVar("R", BackendType, FilterType, PullPolicyType)

ENTRY_POINT_GROUP = "crishim.plugins"
#: Comma-separated plugin names to skip, on top of the config's list.
DISABLE_ENV = "CRISHIM_DISABLE_PLUGINS"


class PluginError(Exception):
    """A plugin could not be loaded or contradicts another one."""


@dataclass(frozen=True)
class PluginInfo:
    """One entry point of the ``crishim.plugins`` group, loaded or not."""

    name: str
    value: str
    package: str
    version: str
    loaded: bool
    error: str = ""
    disabled: bool = False


class PluginManager:
    """One typed method per hook; the core never calls ``pm.hook`` itself."""

    def __init__(self, pm: pluggy.PluginManager, infos: Sequence[PluginInfo]) -> None:
        self._pm = pm
        self.infos: tuple[PluginInfo, ...] = tuple(infos)
        self._backend_types: dict[str, BackendType] | None = None
        self._filter_types: dict[str, FilterType] | None = None
        self._policy_types: dict[str, PullPolicyType] | None = None

    @property
    def pluggy(self) -> pluggy.PluginManager:
        return self._pm

    def backend_types(self) -> dict[str, BackendType]:
        """Every backend type offered, by name; two claims of one name fail."""
        if self._backend_types is None:
            self._backend_types = self._registered(
                "crishim_backend_types", BackendType, "backend type"
            )
        return self._backend_types

    def filter_types(self) -> dict[str, FilterType]:
        """Every filter type offered, by name; two claims of one name fail."""
        if self._filter_types is None:
            self._filter_types = self._registered("crishim_filter_types", FilterType, "filter type")
        return self._filter_types

    def pull_policy_types(self) -> dict[str, PullPolicyType]:
        """Every pull policy type offered, by name; two claims of one name fail."""
        if self._policy_types is None:
            self._policy_types = self._registered(
                "crishim_pull_policy_types", PullPolicyType, "pull policy type"
            )
        return self._policy_types

    def _registered(self, hook_name: str, kind: type[R], what: str) -> dict[str, R]:
        """Call a registering hook plugin by plugin, knowing who offered what."""
        found: dict[str, R] = {}
        owners: dict[str, str] = {}
        for impl in getattr(self._pm.hook, hook_name).get_hookimpls():
            plugin_name = impl.plugin_name
            info = self._info(plugin_name)
            function = cast(Callable[[], Iterable[R] | None], impl.function)
            for item in function() or ():
                if not isinstance(item, kind):
                    raise PluginError(
                        f"plugin {plugin_name!r}: {hook_name} returned "
                        f"{type(item).__name__}, expected {kind.__name__}"
                    )
                if item.name in found:
                    raise PluginError(
                        f"{what} {item.name!r} is claimed by both plugin "
                        f"{owners[item.name]!r} and plugin {plugin_name!r}"
                    )
                if info is not None:
                    item = replace(item, package=info.package, version=info.version)
                found[item.name] = item
                owners[item.name] = plugin_name
        return found

    def _info(self, plugin_name: str) -> PluginInfo | None:
        for info in self.infos:
            if info.name == plugin_name:
                return info
        return None


def _disabled_from_env() -> set[str]:
    raw = os.environ.get(DISABLE_ENV, "")
    return {part.strip() for part in raw.split(",") if part.strip()}


def load_plugins(
    *,
    disabled: Iterable[str] = (),
    strict: bool = False,
    extra: Iterable[tuple[str, object]] = (),
    entry_point_group: str = ENTRY_POINT_GROUP,
) -> PluginManager:
    """Build the plugin manager: add the specs, load entry points, check.

    ``extra`` registers (name, plugin) pairs directly; tests use it to add
    plugins that are not installed.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    skip = set(disabled) | _disabled_from_env()
    infos: list[PluginInfo] = []
    eps = sorted(entry_points(group=entry_point_group), key=lambda e: e.name)
    for ep in eps:
        package, version = _distribution(ep)
        if ep.name in skip:
            log.info("plugin %s disabled", ep.name)
            infos.append(PluginInfo(ep.name, ep.value, package, version, False, disabled=True))
            continue
        if pm.has_plugin(ep.name):
            message = f"two entry points are named {ep.name!r}; the second ({ep.value}) is ignored"
            if strict:
                raise PluginError(message)
            log.error("%s", message)
            continue
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
        except Exception as exc:  # one broken plugin must not stop the others
            message = f"plugin {ep.name!r} ({ep.value}) failed to load: {exc!r}"
            if strict:
                raise PluginError(message) from exc
            log.error("%s", message)
            infos.append(PluginInfo(ep.name, ep.value, package, version, False, error=repr(exc)))
            continue
        infos.append(PluginInfo(ep.name, ep.value, package, version, True))
    for name, plugin in extra:
        if name in skip:
            continue
        pm.register(plugin, name=name)
        module = plugin.__name__ if isinstance(plugin, ModuleType) else type(plugin).__name__
        infos.append(PluginInfo(name, module, "", "", True))
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {exc.plugin!r}: {exc}") from exc
    return PluginManager(pm, infos)


def _distribution(ep: EntryPoint) -> tuple[str, str]:
    dist = ep.dist
    if dist is None:
        return "", ""
    return dist.metadata["Name"] or dist.name, dist.version
