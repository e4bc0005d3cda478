"""Building the objects from one validated config (dependency-injector), and running them.

pluggy finds the plugin *types*; these containers build the configured
*instances* (two ``oci-dir`` backends are two instances of one type), the
catalog over them, the servicer and the server. Each small container owns
one part, in the style of dependency-injector's multiple-containers
application:

* :class:`Core`: the settings, the plugins found, the pins;
* :class:`Telemetry`: tracing and metrics (crishim.telemetry),
  all None when off;
* :class:`Instances`: the backend, filter and pull policy instances
  (:mod:`crishim.instances` builds them);
* :class:`Routing`: the catalog over them, and the live catalog a reload swaps;
* :class:`Serving`: the pull board, the servicer, the status endpoint, the server.

:class:`Application` composes them and offers each provider under its own
name too (``app.catalog()``, ``app.tracer_provider()``), which is how
callers and ``running_server(overrides=...)`` name them. :func:`started`
is the one place an application is started and stopped: the CLI's
commands, ``crishim serve`` and :func:`crishim.testing.server.running_server`
all go through it. Nothing outside this module and crishim.testing.server
imports dependency-injector (tests/test_layering.py); tests swap a provider
with ``.override()``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

from dependency_injector import containers, providers

from crishim import config as config_mod
from crishim import metrics, tracing
from crishim.catalog import Catalog
from crishim.config import ConfigError, Settings
from crishim.instances import (
    build_backends,
    build_filters,
    build_policies,
    raw_option_problems,
    status_endpoint,
)
from crishim.live import LiveCatalog
from crishim.manager import load_plugins
from crishim.pinning import PinnedPolicy
from crishim.pulls import PullBoard
from crishim.server import Server
from crishim.service import ImageService

__all__ = [
    "SHARED_ON_RELOAD",
    "Application",
    "Started",
    "build_backends",
    "build_filters",
    "build_policies",
    "check_config",
    "make_application",
    "make_successor",
    "release_catalog",
    "started",
]


class Core(containers.DeclarativeContainer):
    """The settings, the plugins they load, the pins they name."""

    settings = providers.Dependency(instance_of=Settings)

    plugins = providers.ThreadSafeSingleton(
        load_plugins,
        disabled=settings.provided.plugins.disabled,
        strict=settings.provided.plugins.strict,
    )
    pinned = providers.ThreadSafeSingleton(PinnedPolicy, settings.provided.pinned)


class Telemetry(containers.DeclarativeContainer):
    """Traces and metrics; every provider gives None when they are off."""

    settings = providers.Dependency(instance_of=Settings)

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


class Instances(containers.DeclarativeContainer):
    """The configured instances, in config order (built, not started)."""

    core = providers.DependenciesContainer()
    telemetry = providers.DependenciesContainer()

    backends = providers.ThreadSafeSingleton(
        build_backends,
        settings=core.settings,
        plugins=core.plugins,
        tracer_provider=telemetry.tracer_provider,
        pinned=core.pinned,
    )
    filters = providers.ThreadSafeSingleton(
        build_filters, settings=core.settings, plugins=core.plugins
    )
    policies = providers.ThreadSafeSingleton(
        build_policies,
        settings=core.settings,
        plugins=core.plugins,
        telemetry=telemetry.plugin_telemetry,
        tracer_provider=telemetry.tracer_provider,
    )


class Routing(containers.DeclarativeContainer):
    """The catalog over the instances, and the live catalog the servicer asks."""

    core = providers.DependenciesContainer()
    telemetry = providers.DependenciesContainer()
    instances = providers.DependenciesContainer()

    catalog = providers.ThreadSafeSingleton(
        Catalog,
        backends=instances.backends,
        pinned=core.pinned,
        telemetry=telemetry.plugin_telemetry,
        filters=instances.filters,
        policies=instances.policies,
        fail_on_backend_error=core.settings.provided.fail_on_backend_error,
        timeout_workers=core.settings.provided.server.workers,
    )
    #: what the service asks: ``catalog``, until a reload swaps in another
    live_catalog = providers.ThreadSafeSingleton(LiveCatalog, catalog)


class Serving(containers.DeclarativeContainer):
    """The pull board, the servicer, the status endpoint and the gRPC server."""

    settings = providers.Dependency(instance_of=Settings)
    telemetry = providers.DependenciesContainer()
    routing = providers.DependenciesContainer()

    board = providers.ThreadSafeSingleton(
        PullBoard,
        running=settings.provided.server.max_concurrent_pulls,
        queued=settings.provided.server.max_queued_pulls,
        slow_after=settings.provided.server.slow_pull_seconds,
        meter_provider=telemetry.meter_provider,
    )
    service = providers.ThreadSafeSingleton(
        ImageService,
        catalog=routing.live_catalog,
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
        interceptors=telemetry.interceptors,
    )


class Application(containers.DeclarativeContainer):
    """The whole shim, wired from ``settings``: the five containers, composed."""

    settings = providers.Dependency(instance_of=Settings)

    core = providers.Container(Core, settings=settings)
    telemetry = providers.Container(Telemetry, settings=settings)
    instances = providers.Container(Instances, core=core, telemetry=telemetry)
    routing = providers.Container(Routing, core=core, telemetry=telemetry, instances=instances)
    serving = providers.Container(Serving, settings=settings, telemetry=telemetry, routing=routing)

    # -- every provider by its own name (the same provider objects) --
    plugins = core.plugins
    pinned = core.pinned
    tracing_setup = telemetry.tracing_setup
    span_exporter = telemetry.span_exporter
    tracer_provider = telemetry.tracer_provider
    metrics_setup = telemetry.metrics_setup
    metric_readers = telemetry.metric_readers
    prometheus_reader = telemetry.prometheus_reader
    meter_provider = telemetry.meter_provider
    prometheus = telemetry.prometheus
    plugin_telemetry = telemetry.plugin_telemetry
    interceptors = telemetry.interceptors
    backends = instances.backends
    filters = instances.filters
    policies = instances.policies
    catalog = routing.catalog
    live_catalog = routing.live_catalog
    board = serving.board
    service = serving.service
    status = serving.status
    server = serving.server


def make_application(settings: Settings, *, strict_plugins: bool | None = None) -> Application:
    """A container for ``settings``; building it checks plugins and options."""
    if strict_plugins is not None and strict_plugins != settings.plugins.strict:
        plugins = settings.plugins.model_copy(update={"strict": strict_plugins})
        settings = settings.model_copy(update={"plugins": plugins})
    return Application(settings=settings)


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
        assert isinstance(provider, providers.BaseSingleton)
        provider.reset()


# -- starting and stopping: one place --------------------------------------------------------

#: The steps :func:`started` runs, as its ``run`` is told them.
START_BACKENDS = "starting the backends"
STOP_SERVER = "stopping the server"
CLOSE_BACKENDS = "closing the backends"
FLUSH_TELEMETRY = "flushing telemetry"

#: How :func:`started` runs a step: ``run(step, fn)``.
StepRunner = Callable[[str, Callable[[], object]], object]


def _directly(step: str, fn: Callable[[], object]) -> None:
    fn()


class Started:
    """An application whose backends have started: what :func:`started` yields."""

    def __init__(self, app: Application) -> None:
        self.app = app
        #: The gRPC server, once :meth:`serve` has started it.
        self.server: Server | None = None
        #: The live catalog the servicer asks (a reload swaps catalogs in it).
        self.live: LiveCatalog = app.live_catalog()

    @property
    def catalog(self) -> Catalog:
        """The catalog being served: the application's, or one a reload swapped in."""
        return self.live.current

    def serve(self) -> Server:
        """Start the gRPC server on the configured socket (it stops on exit)."""
        server: Server = self.app.server()
        server.start()  # raises SocketError, and then there is nothing to stop
        self.server = server
        return server


@contextlib.contextmanager
def started(
    app: Application, *, grace: float = 0.0, run: StepRunner = _directly
) -> Iterator[Started]:
    """Start ``app``'s backends; on exit, stop everything started, in reverse order.

    Entering builds the catalog (a config or plugin problem raises
    :class:`~crishim.config.ConfigError` or
    :class:`~crishim.manager.PluginError` before anything starts) and runs
    every backend's ``start``; :meth:`Started.serve` starts the server.
    Leaving, whatever happened: the server stops (calls in flight get
    ``grace`` seconds), the catalog being served closes (every backend's
    ``close``), and the telemetry resources shut down (spans and metrics
    still held are exported).

    ``run(step, fn)`` runs each step (:data:`START_BACKENDS`,
    :data:`STOP_SERVER`, :data:`CLOSE_BACKENDS`, :data:`FLUSH_TELEMETRY`):
    directly by default; ``crishim serve`` runs each on a thread with a
    bound, so a hung plugin cannot hold the process (:mod:`crishim.daemon`).
    """
    running = Started(app)
    try:
        run(START_BACKENDS, running.catalog.start)
        yield running
    finally:
        server = running.server
        if server is not None:
            run(STOP_SERVER, lambda: server.stop(grace))
        run(CLOSE_BACKENDS, running.catalog.close)
        run(FLUSH_TELEMETRY, app.shutdown_resources)


# -- checking a config file: every check serve makes ------------------------------------------


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
        problems += raw_option_problems(data, source, base_dir, strict_plugins, problems)
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
