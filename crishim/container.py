"""Building the objects from one validated config: dependency-injector.

pluggy finds the plugin *types*; this container builds the configured
*instances* (two ``oci-dir`` backends are two instances of one type), the
catalog over them, the servicer and the server. Nothing outside this module
imports dependency-injector; tests swap a provider with ``.override()``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from dependency_injector import containers, providers
from opentelemetry import trace
from pydantic import ValidationError

from crishim import config as config_mod
from crishim import metrics, tracing
from crishim.catalog import BackendHandle, Catalog, FilterHandle, PinnedPolicy
from crishim.config import (
    BackendSettings,
    ConfigError,
    FilterSettings,
    PluginSettings,
    PullPolicySettings,
    Settings,
)
from crishim.live import LiveCatalog
from crishim.manager import PluginError, PluginManager, load_plugins
from crishim.policies import PolicyChain, PolicyHandle
from crishim.pulls import PullBoard
from crishim.server import Server
from crishim.service import ImageService
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

log = logging.getLogger(__name__)


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
    telemetry: tracing.PluginTelemetry | None = None,
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


class Application(containers.DeclarativeContainer):
    """The whole shim, wired from ``settings``."""

    settings = providers.Dependency(instance_of=Settings)

    plugins = providers.ThreadSafeSingleton(
        load_plugins,
        disabled=settings.provided.plugins.disabled,
        strict=settings.provided.plugins.strict,
    )

    # -- telemetry (crishim.tracing, crishim.metrics): all None when off --
    tracing_setup = providers.ThreadSafeSingleton(
        tracing.resolve_tracing, settings.provided.tracing
    )
    span_exporter = providers.ThreadSafeSingleton(tracing.make_span_exporter, tracing_setup)
    #: shut down (the batch exported) by app.shutdown_resources()
    tracer_provider = providers.Resource(
        tracing.tracer_provider_resource, tracing_setup, span_exporter
    )
    metrics_setup = providers.ThreadSafeSingleton(
        metrics.resolve_metrics,
        settings.provided.metrics,
        tracing_settings=settings.provided.tracing,
    )
    metric_readers = providers.ThreadSafeSingleton(metrics.make_metric_readers, metrics_setup)
    prometheus_reader = providers.ThreadSafeSingleton(metrics.make_prometheus_reader, metrics_setup)
    meter_provider = providers.Resource(
        metrics.meter_provider_resource, metrics_setup, metric_readers, prometheus_reader
    )
    #: the scrape endpoint: started with the server's interceptors only
    prometheus = providers.Resource(
        metrics.prometheus_endpoint_resource,
        metrics_setup,
        prometheus_reader,
        settings.provided.source,
    )
    plugin_telemetry = providers.ThreadSafeSingleton(
        tracing.plugin_telemetry,
        tracer_provider,
        providers.Callable(metrics.backend_calls_counter, meter_provider),
    )
    interceptors = providers.ThreadSafeSingleton(
        tracing.server_interceptors,
        tracer_provider,
        providers.Callable(metrics.rpc_metrics_interceptor, meter_provider, prometheus),
    )

    pinned = providers.ThreadSafeSingleton(PinnedPolicy, settings.provided.pinned)

    backends = providers.ThreadSafeSingleton(
        build_backends,
        settings=settings,
        plugins=plugins,
        tracer_provider=tracer_provider,
        pinned=pinned,
    )

    filters = providers.ThreadSafeSingleton(build_filters, settings=settings, plugins=plugins)

    policies = providers.ThreadSafeSingleton(
        build_policies,
        settings=settings,
        plugins=plugins,
        telemetry=plugin_telemetry,
        tracer_provider=tracer_provider,
    )

    catalog = providers.ThreadSafeSingleton(
        Catalog,
        backends=backends,
        pinned=pinned,
        telemetry=plugin_telemetry,
        filters=filters,
        policies=policies,
        fail_on_backend_error=settings.provided.fail_on_backend_error,
        timeout_workers=settings.provided.server.workers,
    )

    board = providers.ThreadSafeSingleton(
        PullBoard,
        running=settings.provided.server.max_concurrent_pulls,
        queued=settings.provided.server.max_queued_pulls,
        slow_after=settings.provided.server.slow_pull_seconds,
        meter_provider=meter_provider,
    )
    #: what the service asks: ``catalog``, until a reload swaps in another
    live_catalog = providers.ThreadSafeSingleton(LiveCatalog, catalog)

    service = providers.ThreadSafeSingleton(
        ImageService,
        catalog=live_catalog,
        max_send_message_size=settings.provided.server.max_send_message_size,
        stream_batch_bytes=settings.provided.server.stream_batch_bytes,
        max_concurrent_pulls=settings.provided.server.max_concurrent_pulls,
        board=board,
    )

    status = providers.ThreadSafeSingleton(
        status_endpoint,
        settings.provided.status_socket_path,
        board,
        settings.provided.server.socket_mode,
    )

    server = providers.ThreadSafeSingleton(
        Server,
        servicer=service,
        socket_path=settings.provided.socket_path,
        workers=settings.provided.server.workers,
        # a thread for every pull running or queued, on top of the workers
        pull_workers=providers.Callable(
            int.__add__,
            settings.provided.server.max_concurrent_pulls,
            settings.provided.server.max_queued_pulls,
        ),
        status=status,
        max_recv_message_size=settings.provided.server.max_recv_message_size,
        max_send_message_size=settings.provided.server.max_send_message_size,
        socket_mode=settings.provided.server.socket_mode,
        socket_gid=settings.provided.server.socket_gid,
        interceptors=interceptors,
    )


def make_application(settings: Settings, *, strict_plugins: bool | None = None) -> Application:
    """A container for ``settings``; building it checks plugins and options."""
    if strict_plugins is not None and strict_plugins != settings.plugins.strict:
        plugins = settings.plugins.model_copy(update={"strict": strict_plugins})
        settings = settings.model_copy(update={"plugins": plugins})
    app = Application(settings=settings)
    return app


#: Providers a reload takes over from the running application: telemetry
#: lives as long as the process (the server's interceptors hold it).
SHARED_ON_RELOAD = ("tracer_provider", "meter_provider", "prometheus", "plugin_telemetry")


def make_successor(running: Application, settings: Settings) -> Application:
    """An application for a reloaded config that shares ``running``'s telemetry.

    Only its catalog (backends, filters, pull policies, pins) is used: the server, the
    servicer and the telemetry providers stay those of ``running``, so
    ``settings`` should carry the running ``server``, ``tracing`` and
    ``metrics`` sections (:func:`crishim.daemon.reloadable`).
    """
    app = Application(settings=settings)
    for name in SHARED_ON_RELOAD:
        getattr(app, name).override(providers.Object(getattr(running, name)()))
    return app


def release_catalog(app: Application) -> None:
    """Drop the container's references to its catalog and what it built.

    After a reload swapped the catalog out and closed it, this lets its
    indexes be freed; the container's other providers stay usable.
    """
    for provider in (app.catalog, app.backends, app.filters, app.policies, app.pinned):
        provider.reset()


def check_config(
    path: str | Path,
    *,
    listen: str | None = None,
    strict_plugins: bool | None = None,
    make: Callable[[Settings], Application] | None = None,
    on_settings: Callable[[Settings], None] | None = None,
) -> tuple[Settings, Application]:
    """Every check ``serve`` makes before it starts, every problem in one ConfigError.

    The schema, then every backend's, filter's and pull policy's options with its type's
    model (paths checked against the file system), then tracing and
    metrics. When the schema fails, the options of every entry that names
    a known type are still checked, so one pass shows all that is wrong.
    Returns the settings and an application whose backends are built (not
    started). ``make`` builds the application (default: make_application);
    ``on_settings`` is called once the schema holds, before anything is built
    (``serve`` configures logging there, so building logs where it should).
    """
    source = str(path)
    base_dir = Path(path).resolve().parent
    data = config_mod.read_config(path)
    try:
        settings = config_mod.parse_settings(data, source=source, base_dir=base_dir)
    except ConfigError as exc:
        problems = list(exc.problems)
        problems += _raw_option_problems(data, source, base_dir, strict_plugins, problems)
        raise ConfigError(source, problems) from None
    if listen is not None:
        try:
            settings = settings.with_listen(listen)
        except ValueError as exc:
            raise ConfigError("--listen", [("", str(exc))]) from None
    if on_settings is not None:
        on_settings(settings)
    if make is None:
        app = make_application(settings, strict_plugins=strict_plugins)
    else:
        app = make(settings)
    errors = []
    for build in (
        app.backends,
        app.filters,
        app.policies,
        app.tracing_setup,
        app.metrics_setup,
    ):
        try:
            build()
        except ConfigError as exc:
            errors.append(exc)
    if errors:
        raise ConfigError.combine(errors)
    return settings, app


def _raw_option_problems(
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
