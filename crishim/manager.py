"""Finding plugins: the typed facade over pluggy.

Plugin types come from the entry-point group ``crishim.plugins`` (the
built-ins are registered there too, so the core never names one). Each
entry point is loaded and checked on its own, and a plugin that fails is
reported once (its entry point, distribution and version, and why) and left
out while the others load; ``strict`` makes any such failure fatal. A plugin
fails when it does not import, when a hook implementation matches no hook
(a misspelt name would otherwise be ignored in silence: the report names the
closest hook), when pluggy rejects an implementation's signature, or when a
registering hook raises or returns something else than the type it
registers. Two plugins claiming one type name stay an error: a config naming
that type could mean either.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import Any, cast

import pluggy

from crishim import hookspecs
from crishim.types import BackendType, FilterType, PullPolicyType

__all__ = [
    "DISABLE_ENV",
    "ENTRY_POINT_GROUP",
    "PluginError",
    "PluginInfo",
    "PluginManager",
    "load_plugins",
]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "crishim.plugins"
#: Comma-separated plugin names to skip, on top of the config's list.
DISABLE_ENV = "CRISHIM_DISABLE_PLUGINS"

#: The registering hooks and the type each returns.
_REGISTERING: tuple[
    tuple[str, type[BackendType] | type[FilterType] | type[PullPolicyType]], ...
] = (
    ("crishim_backend_types", BackendType),
    ("crishim_filter_types", FilterType),
    ("crishim_pull_policy_types", PullPolicyType),
)


class PluginError(Exception):
    """A plugin could not be loaded or contradicts another one."""


@dataclass(frozen=True)
class PluginInfo:
    """One entry point of the ``crishim.plugins`` group, loaded or not."""

    #: The entry-point name (what ``plugins.disabled`` names).
    name: str
    #: The module (or object) the entry point names.
    value: str
    #: The distribution that declares the entry point, and its version.
    package: str
    version: str
    loaded: bool
    #: Why the plugin was left out (empty when it loaded).
    error: str = ""
    disabled: bool = False
    #: The type names a plugin left out would have offered, when its
    #: registering hooks could still tell (a misspelt hook elsewhere).
    offers: tuple[str, ...] = ()

    @property
    def origin(self) -> str:
        """``distribution version``, or ``unknown package``."""
        return f"{self.package} {self.version}".strip() or "unknown package"


@dataclass(frozen=True)
class _Offer:
    """What one plugin's registering hooks returned."""

    plugin: str
    backends: tuple[BackendType, ...] = ()
    filters: tuple[FilterType, ...] = ()
    policies: tuple[PullPolicyType, ...] = ()

    def names(self) -> tuple[str, ...]:
        """Every type name offered, of any kind."""
        return tuple(t.name for kind in (self.backends, self.filters, self.policies) for t in kind)

    def stamped(self, package: str, version: str) -> _Offer:
        """The offer with each type's ``package`` and ``version`` filled in."""
        return _Offer(
            self.plugin,
            tuple(replace(t, package=package, version=version) for t in self.backends),
            tuple(replace(t, package=package, version=version) for t in self.filters),
            tuple(replace(t, package=package, version=version) for t in self.policies),
        )


class PluginManager:
    """What the plugins offer, typed: one method per registering hook.

    The hooks ran once, when the plugins were loaded (:func:`load_plugins`);
    the core never calls ``pm.hook`` itself, and keeps no pluggy manager.
    """

    def __init__(self, infos: Sequence[PluginInfo], offers: Sequence[_Offer] = ()) -> None:
        self.infos: tuple[PluginInfo, ...] = tuple(infos)
        self._offers = tuple(offers)
        self._backend_types: dict[str, BackendType] | None = None
        self._filter_types: dict[str, FilterType] | None = None
        self._policy_types: dict[str, PullPolicyType] | None = None

    def backend_types(self) -> dict[str, BackendType]:
        """Every backend type offered, by name; two claims of one name fail."""
        if self._backend_types is None:
            self._backend_types = _merge(
                ((o.plugin, o.backends) for o in self._offers), "backend type"
            )
        return self._backend_types

    def filter_types(self) -> dict[str, FilterType]:
        """Every filter type offered, by name; two claims of one name fail."""
        if self._filter_types is None:
            self._filter_types = _merge(
                ((o.plugin, o.filters) for o in self._offers), "filter type"
            )
        return self._filter_types

    def pull_policy_types(self) -> dict[str, PullPolicyType]:
        """Every pull policy type offered, by name; two claims of one name fail."""
        if self._policy_types is None:
            self._policy_types = _merge(
                ((o.plugin, o.policies) for o in self._offers), "pull policy type"
            )
        return self._policy_types

    @property
    def failed(self) -> tuple[PluginInfo, ...]:
        """The plugins left out because they failed (not the disabled ones)."""
        return tuple(i for i in self.infos if not i.loaded and not i.disabled)

    def missing_type_hint(self, type_name: str) -> str:
        """Which plugin left out (failed or disabled) may be the one offering ``type_name``.

        Empty when nothing was left out. A plugin whose registering hooks
        could still be asked names its types exactly; otherwise a plugin is
        taken to offer a type named like its entry point or distribution
        (``json-catalog``, ``crishim-json-catalog``), as every plugin here does.
        """
        left_out = [i for i in self.infos if not i.loaded]
        if not left_out:
            return ""
        for info in left_out:
            if type_name in info.offers:
                return f"plugin {info.name!r} ({info.origin}) offers it but {_why(info)}"
        for info in left_out:
            if type_name in _likely_types(info):
                return f"plugin {info.name!r} ({info.origin}) may offer it but {_why(info)}"
        failed = [i.name for i in left_out if not i.disabled]
        if not failed:
            return ""
        return f"plugins that failed to load: {', '.join(failed)} (see `crishim plugins`)"


def _why(info: PluginInfo) -> str:
    if info.disabled:
        return f"is disabled (plugins.disabled or {DISABLE_ENV})"
    return f"failed to load: {info.error} (see `crishim plugins`)"


def _likely_types(info: PluginInfo) -> set[str]:
    names = {info.name}
    if info.package:
        names |= {info.package, info.package.removeprefix("crishim-")}
    return names


def _merge(offers: Iterable[tuple[str, Sequence[Any]]], what: str) -> dict[str, Any]:
    found: dict[str, Any] = {}
    owners: dict[str, str] = {}
    for plugin_name, items in offers:
        for item in items:
            if item.name in found:
                raise PluginError(
                    f"{what} {item.name!r} is claimed by both plugin "
                    f"{owners[item.name]!r} and plugin {plugin_name!r}; "
                    f"disable one (plugins.disabled or {DISABLE_ENV})"
                )
            found[item.name] = item
            owners[item.name] = plugin_name
    return found


def _disabled_from_env() -> set[str]:
    raw = os.environ.get(DISABLE_ENV, "")
    return {part.strip() for part in raw.split(",") if part.strip()}


def _hook_specs() -> list[tuple[str, Callable[..., object]]]:
    return [
        (name, fn)
        for name, fn in vars(hookspecs).items()
        if inspect.isfunction(fn) and hasattr(fn, f"{hookspecs.PROJECT}_spec")
    ]


def _hook_names() -> list[str]:
    return [name for name, _ in _hook_specs()]


def _unknown_hooks(pm: pluggy.PluginManager, plugin: object) -> list[str]:
    """Names of the plugin's hook implementations that match no hook specification."""
    unknown = []
    for caller in pm.get_hookcallers(plugin) or ():
        if caller.has_spec():
            continue
        if any(i.plugin is plugin and not i.optionalhook for i in caller.get_hookimpls()):
            unknown.append(caller.name)
    return sorted(unknown)


def _unknown_hook_message(names: Sequence[str]) -> str:
    known = _hook_names()
    parts = []
    for name in names:
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}?" if close else f"crishim's hooks: {', '.join(known)}"
        parts.append(f"hook implementation {name} matches no crishim hook ({hint})")
    return "; ".join(parts)


def _signature_problem(plugin: object) -> str:
    """What pluggy refused in a hook implementation's signature, said plainly."""
    specs = dict(_hook_specs())
    for attr in dir(plugin):
        function = getattr(plugin, attr, None)
        if attr not in specs or not hasattr(function, f"{hookspecs.PROJECT}_impl"):
            continue
        assert callable(function)
        given = inspect.signature(function)
        expected = inspect.signature(specs[attr])
        extra = [p for p in given.parameters if p not in expected.parameters]
        if extra:
            return (
                f"hook implementation {attr}{given} asks for {', '.join(extra)}, "
                f"which the hook does not pass: it is {attr}{str(expected).split(' ->')[0]}"
            )
    return ""


def _offer(pm: pluggy.PluginManager, plugin: object, name: str) -> _Offer:
    """Call the plugin's registering hooks; raise PluginError naming what went wrong."""
    found: dict[str, tuple[Any, ...]] = {}
    for hook_name, kind in _REGISTERING:
        items: list[Any] = []
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            if impl.plugin is not plugin:
                continue
            function = cast(Callable[[], Iterable[Any] | None], impl.function)
            try:
                returned = list(function() or ())
            except Exception as exc:
                raise PluginError(f"{hook_name} raised {exc!r}") from exc
            for item in returned:
                if not isinstance(item, kind):
                    raise PluginError(
                        f"{hook_name} returned {type(item).__name__}, expected {kind.__name__}"
                    )
            items.extend(returned)
        found[hook_name] = tuple(items)
    return _Offer(
        name,
        found["crishim_backend_types"],
        found["crishim_filter_types"],
        found["crishim_pull_policy_types"],
    )


def _check(
    pm: pluggy.PluginManager, plugin: object, name: str
) -> tuple[_Offer | None, str, tuple[str, ...]]:
    """Register ``plugin`` and check it: (its offer, or None and why, what it would offer)."""
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        return None, _signature_problem(plugin) or " ".join(str(exc).split()), ()
    except ValueError as exc:  # pluggy: a name or an object registered twice
        return None, str(exc), ()
    unknown = _unknown_hooks(pm, plugin)
    if unknown:
        try:  # what its well-named hooks offer, so a config naming it gets a hint
            offers = _offer(pm, plugin, name).names()
        except PluginError:
            offers = ()
        pm.unregister(plugin, name=name)
        return None, _unknown_hook_message(unknown), offers
    try:
        return _offer(pm, plugin, name), "", ()
    except PluginError as exc:
        pm.unregister(plugin, name=name)
        return None, str(exc), ()


def load_plugins(
    *,
    disabled: Iterable[str] = (),
    strict: bool = False,
    extra: Iterable[tuple[str, object]] = (),
    entry_point_group: str = ENTRY_POINT_GROUP,
) -> PluginManager:
    """Build the plugin manager: add the specs, load and check each plugin on its own.

    ``extra`` registers (name, plugin) pairs directly; tests use it to add
    plugins that are not installed. Raises :class:`PluginError` when
    ``strict`` and a plugin fails.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    skip = set(disabled) | _disabled_from_env()
    infos: list[PluginInfo] = []
    offers: list[_Offer] = []

    def left_out(info: PluginInfo, exc: BaseException | None = None) -> None:
        message = f"plugin {info.name!r} ({info.origin}, {info.value}) failed to load: {info.error}"
        if strict:
            raise PluginError(message) from exc
        log.error("%s; the plugin is left out", message)
        infos.append(info)

    candidates: list[tuple[str, str, str, str, Callable[[], object]]] = []
    for ep in sorted(entry_points(group=entry_point_group), key=lambda e: e.name):
        package, version = _distribution(ep)
        candidates.append((ep.name, ep.value, package, version, ep.load))
    for name, plugin in extra:
        value = plugin.__name__ if isinstance(plugin, ModuleType) else type(plugin).__name__
        candidates.append((name, value, "", "", _returning(plugin)))

    for name, value, package, version, load in candidates:
        info = PluginInfo(name, value, package, version, False)
        if name in skip:
            log.info("plugin %s disabled", name)
            infos.append(replace(info, disabled=True))
            continue
        if pm.has_plugin(name) or any(i.name == name for i in infos):
            message = f"two plugins are named {name!r}; the second ({value}) is ignored"
            if strict:
                raise PluginError(message)
            log.error("%s", message)
            continue
        try:
            plugin = load()
        except Exception as exc:  # one broken plugin must not stop the others
            left_out(replace(info, error=f"cannot import it: {exc!r}"), exc)
            continue
        offer, problem, would_offer = _check(pm, plugin, name)
        if offer is None:
            left_out(replace(info, error=problem, offers=would_offer))
            continue
        infos.append(replace(info, loaded=True))
        # who registered each type, for `crishim plugins` and check-config
        offers.append(offer.stamped(package, version) if package else offer)
    return PluginManager(infos, offers)


def _returning(plugin: object) -> Callable[[], object]:
    return lambda: plugin


def _distribution(ep: EntryPoint) -> tuple[str, str]:
    dist = ep.dist
    if dist is None:
        return "", ""
    return dist.metadata["Name"] or dist.name, dist.version
