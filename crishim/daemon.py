"""The serving process: start-up, reloads on SIGHUP, and a stop that always ends.

``crishim serve`` runs :func:`serve`. Signals are handled from the first
moment: SIGTERM and SIGINT stop, SIGHUP reloads (it never kills, not even
during start-up: the reload then follows the start). The main thread only
waits and steers; whatever may block (starting and closing backends, the
gRPC server's stop, flushing telemetry) runs on a thread of its own with a
bound, so a hung plugin or pull cannot keep the process alive:

* a stop ends the process within ``server.grace_period`` plus
  :data:`STOP_MARGIN` seconds, whatever plugins or pulls are doing: calls
  in flight get the grace period, closing the backends and flushing
  telemetry get what is left of the margin, and a timer armed by the
  signal ends the process if anything still holds it then. A second
  SIGTERM or SIGINT ends it at once;
* a reload builds the new config's catalog aside (every check ``serve``
  makes, then the backends' start), swaps it in without touching the
  socket, and closes the previous one once its calls in flight are done
  (at most ``server.grace_period`` later). An invalid config, or a backend
  that fails to start, is logged with file, key and reason and the running
  config stays. Keys that need a restart (``server``, ``tracing``,
  ``metrics``) keep their running values, and the log says so.

The start and the stop themselves are :func:`crishim.container.started`'s
(backends, server, backends' close, telemetry flush, in that order); the
daemon runs each of its steps with its bound, and the process machinery
(signals, bounded steps, the exit) is :mod:`crishim.process`.

Under systemd (``Type=notify``) the state goes to the service manager as
it changes: READY once the socket serves, RELOADING during a reload,
STOPPING at a stop, with a status line (:mod:`crishim.notify`).
"""

from __future__ import annotations

import logging
import platform
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from crishim import __version__, container, logs
from crishim.catalog import Catalog
from crishim.config import ConfigError, Settings
from crishim.container import Application, Started, check_config, make_successor, release_catalog
from crishim.cri_messages import IMAGE_SERVICE
from crishim.live import Generation, LiveCatalog
from crishim.manager import PluginError
from crishim.notify import Notifier
from crishim.process import (
    EXIT_FORCED,
    Signals,
    bounded,
    exit_now,
    lingering_threads,
    process_started,
)
from crishim.server import Server, SocketError
from crishim.types import IndexedBackend

log = logging.getLogger("crishim")

__all__ = ["EXIT_CONFIG", "EXIT_FORCED", "EXIT_OK", "EXIT_RUNTIME", "Daemon", "reloadable", "serve"]

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_CONFIG = 2
#: Seconds beyond ``server.grace_period`` a stop may take in all.
STOP_MARGIN = 5.0
#: Longest wait for the backends to close (within the margin).
CLOSE_TIMEOUT = 3.0
#: Config sections a reload cannot change: the server (socket, threads,
#: limits) and telemetry live as long as the process.
RESTART_ONLY = ("server", "tracing", "metrics")


class _StartFailed(Exception):
    """Every backend failed to start (the message names file, key and reason)."""


def _where(settings: Settings, name: str | None) -> str:
    """``backends[i] (name, type T)`` for a backend of ``settings`` (``backends`` if unknown)."""
    for i, entry in enumerate(settings.backends):
        if entry.name == name:
            return f"backends[{i}] ({name}, type {entry.type})"
    return "backends"


def _say(message: str) -> None:
    """A start-up failure, on stderr (logging may not be configured yet)."""
    print(f"crishim: {message}", file=sys.stderr, flush=True)


def reloadable(running: Settings, new: Settings, *, say: bool = True) -> Settings:
    """``new`` with the sections a reload cannot change kept as running; says which."""
    for section in RESTART_ONLY:
        before, after = getattr(running, section), getattr(new, section)
        if before == after or not say:
            continue
        if section == "server":
            old_values, new_values = before.model_dump(), after.model_dump()
            for key in sorted(old_values):
                if old_values[key] != new_values[key]:
                    log.warning(
                        "reload: server.%s changed from %r to %r: that needs a restart; keeping %r",
                        key,
                        old_values[key],
                        new_values[key],
                        old_values[key],
                    )
        else:  # may hold secrets (headers): name the section only
            log.warning(
                "reload: %s changed: that needs a restart; keeping the running one", section
            )
    return new.model_copy(update={section: getattr(running, section) for section in RESTART_ONLY})


def _serves(handle_backend: object) -> str:
    if isinstance(handle_backend, IndexedBackend):
        index = handle_backend.index
        names = sum(len(r.repo_tags) + len(r.repo_digests) for r in index)
        return f"{len(index)} images ({names} names)"
    return "started"


def _describe(catalog: Catalog, settings: Settings, prefix: str = "") -> None:
    """One line per backend: its type and what it serves; then filters, policies and pins."""
    for handle in catalog.backends:
        log.info(
            "%sbackend %s (type %s): %s", prefix, handle.name, handle.type, _serves(handle.backend)
        )
    names = [f.name for f in catalog.filters.filters] if catalog.filters is not None else []
    chain = " (the default chain)" if settings.filters is None else ""
    log.info("%sfilters%s: %s", prefix, chain, ", ".join(names) or "none")
    if catalog.policies is not None:
        policies = ", ".join(f"{h.name} ({h.type})" for h in catalog.policies.policies)
        log.info("%spull policies: %s", prefix, policies)
    if settings.pinned:
        log.info("%spinned: %s", prefix, ", ".join(settings.pinned))


def _status(catalog: Catalog, socket_path: Path) -> str:
    return f"serving {len(catalog.backends)} backends on unix://{socket_path}"


class Daemon:
    """One ``crishim serve`` process."""

    def __init__(
        self,
        config_path: str,
        *,
        listen: str | None = None,
        strict_plugins: bool | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.config_path = config_path
        self.listen = listen
        self.strict_plugins = strict_plugins
        self.notifier = notifier or Notifier()
        self.signals = Signals(self._arm_stop_timer)
        self.grace = 10.0
        self._timer: threading.Timer | None = None
        self._timer_lock = threading.Lock()
        self._stop_deadline: float | None = None
        self._retiring: list[threading.Thread] = []
        self._retired: list[Generation] = []
        #: The running application, once its backends have started.
        self.running: Started | None = None

    # -- the stop bound --------------------------------------------------

    def _arm_stop_timer(self, reason: str) -> None:
        with self._timer_lock:
            if self._timer is not None:
                return
            self._arm(reason)

    def _arm(self, reason: str) -> None:
        budget = self.grace + STOP_MARGIN
        self._stop_deadline = time.monotonic() + budget
        self._timer = threading.Timer(budget, self._force_exit, args=(reason, budget))
        self._timer.daemon = True
        self._timer.start()

    @staticmethod
    def _force_exit(reason: str, budget: float) -> None:
        busy = ", ".join(t.name for t in lingering_threads()) or "none"
        log.error(
            "not stopped %.1fs after %s (server.grace_period + %.0fs): exiting anyway "
            "(threads still busy: %s)",
            budget,
            reason,
            STOP_MARGIN,
            busy,
        )
        exit_now(EXIT_FORCED)

    def _left(self, cap: float) -> float:
        """Seconds a stop step may take: ``cap``, or what is left of the budget."""
        if self._stop_deadline is None:
            return cap
        return max(0.0, min(cap, self._stop_deadline - time.monotonic() - 0.5))

    # -- running ---------------------------------------------------------

    def run(self) -> int:
        started = process_started()
        self.signals.install()
        try:
            code = self._run(started)
        finally:
            self.signals.restore()
            if self._timer is not None:
                self._timer.cancel()
        # The process is done: end it without waiting for threads of any
        # kind (a call stuck in a plugin holds a gRPC worker, which the
        # interpreter would join at exit, forever).
        exit_now(code)
        return code  # pragma: no cover

    def _stuck_calls(self) -> int:
        if self.running is None:
            return 0
        live = self.running.live
        return live.in_flight(live.current_generation) + sum(
            live.in_flight(g) for g in self._retired
        )

    def _run(self, started: float) -> int:
        def begin(settings: Settings) -> None:
            # logging first: building the backends and telemetry logs already
            logs.configure(settings.logging.level, settings.logging.format)
            log.info(
                "crishim %s (Python %s) starting: config %s",
                __version__,
                platform.python_version(),
                Path(settings.source).resolve(),
            )

        try:
            settings, app = check_config(
                self.config_path,
                listen=self.listen,
                strict_plugins=self.strict_plugins,
                on_settings=begin,
            )
        except ConfigError as exc:
            _say(f"invalid config:\n{exc}")
            return EXIT_CONFIG
        except PluginError as exc:
            _say(str(exc))
            return EXIT_CONFIG
        self.grace = settings.server.grace_period
        self.settings = settings
        #: the first application: it owns the server and the telemetry
        self.app = app
        #: the application whose catalog is being served (app until a reload)
        self.current_app = app
        self.notifier.status("starting the backends")
        try:
            with container.started(app, grace=self.grace, run=self._step) as running:
                self.running = running
                self._serve(running, started)
                self._arm_stop_timer("a stop")
                self.notifier.stopping("stopping")
        except _StartFailed as exc:
            _say(str(exc))
            return EXIT_CONFIG
        except SocketError as exc:
            _say(f"{settings.source}: server.listen: {exc}")
            return EXIT_RUNTIME
        stuck = self._stuck_calls()
        if stuck:
            log.warning("exiting with %d calls still stuck in backends", stuck)
        log.info("stopped")
        return EXIT_OK

    def _serve(self, running: Started, started: float) -> None:
        """Serve until a stop signal; reload on SIGHUP (a stop during start-up returns at once)."""
        if self.signals.stop.is_set():
            return
        catalog = running.catalog
        _describe(catalog, self.settings)
        server = running.serve()
        log.info(
            "serving %s on unix://%s (ready in %.2fs)",
            IMAGE_SERVICE,
            server.socket_path,
            time.monotonic() - started,
        )
        self.notifier.ready(_status(catalog, server.socket_path))
        while True:
            self.signals.wake.wait()
            self.signals.wake.clear()
            if self.signals.stop.is_set():
                return
            if self.signals.reload.is_set():
                self.signals.reload.clear()
                self._reload(server)

    def _step(self, step: str, fn: Callable[[], object]) -> None:
        """Run a step of :func:`crishim.container.started`, each on a thread with a bound."""
        if step == container.START_BACKENDS:
            failure = self._start_catalog(fn, self.app.catalog(), self.settings)
            if failure is not None:
                raise _StartFailed(failure)
            return
        if step == container.STOP_SERVER:
            bounded(step, fn, self._left(self.grace + 1))
            return
        if step == container.CLOSE_BACKENDS:
            # the catalogs a reload replaced close first (their calls are over)
            for thread in self._retiring:
                thread.join(self._left(CLOSE_TIMEOUT))
        bounded(step, fn, self._left(CLOSE_TIMEOUT))

    def _start_catalog(
        self, start: Callable[[], object], catalog: Catalog, settings: Settings
    ) -> str | None:
        """Run ``start`` (the catalog's) on a thread; None when started (or a stop came first)."""
        errors: list[BaseException] = []
        done = threading.Event()

        def run() -> None:
            try:
                start()
            except BaseException as exc:
                errors.append(exc)
            finally:
                done.set()

        threading.Thread(target=run, name="crishim-start", daemon=True).start()
        while not done.wait(0.2):
            if self.signals.stop.is_set():
                log.warning("a stop came while the backends were starting; not waiting for them")
                return None
        if not errors:
            # a backend that cannot start costs its own images: the others serve
            # (docs/security.md); each is named by file and key
            for failed, why in catalog.failed.items():
                log.error(
                    "%s: %s: cannot start: %s; serving without it",
                    settings.source,
                    _where(settings, failed),
                    why.removeprefix(f"backend {failed!r}: "),
                )
            return None
        # every backend failed: nothing to serve
        exc = errors[0]
        name = getattr(exc, "backend", None)
        reason = str(exc).removeprefix(f"backend {name!r}: ") if name else f"{exc!r}"
        if not name:
            log.error("a backend failed to start", exc_info=exc)
        return f"{settings.source}: {_where(settings, name)}: cannot start: {reason}"

    # -- reload ----------------------------------------------------------

    @property
    def live(self) -> LiveCatalog:
        """The live catalog the servicer asks (while serving)."""
        assert self.running is not None
        return self.running.live

    def _reload(self, server: Server) -> None:
        started = time.monotonic()
        source = self.settings.source
        log.info("SIGHUP: reloading %s", source)
        self.notifier.reloading(f"reloading {source}")
        running = self.settings
        try:
            settings, app = check_config(
                self.config_path,
                listen=self.listen,
                strict_plugins=self.strict_plugins,
                make=lambda s: make_successor(self.app, reloadable(running, s)),
            )
        except (ConfigError, PluginError) as exc:
            for line in str(exc).splitlines():
                log.error("reload: %s", line)
            self._reload_failed(server)
            return
        settings = reloadable(running, settings, say=False)
        catalog = app.catalog()
        failure = self._start_catalog(catalog.start, catalog, settings)
        if failure is not None or self.signals.stop.is_set():
            if failure is not None:
                log.error("reload: %s", failure)
            bounded("closing the new backends", catalog.close, CLOSE_TIMEOUT)
            if failure is not None:
                self._reload_failed(server)
            return
        old, old_app = self.live.swap(catalog), self.current_app
        self.current_app = app
        self.settings = settings
        if (settings.logging.level, settings.logging.format) != (
            running.logging.level,
            running.logging.format,
        ):
            logs.configure(settings.logging.level, settings.logging.format)
        _describe(catalog, settings, "reload: ")
        log.info(
            "reloaded %s in %.2fs: %s",
            source,
            time.monotonic() - started,
            ", ".join(f"{h.name} ({h.type})" for h in catalog.backends),
        )
        self.notifier.ready(_status(catalog, server.socket_path))
        self._retire(old, old_app)

    def _reload_failed(self, server: Server) -> None:
        log.error("reload failed: still serving the previous config")
        self.notifier.ready(_status(self.live.current, server.socket_path))

    def _retire(self, old: Generation, app: Application) -> None:
        """Close the previous catalog once its calls in flight are done."""

        def run() -> None:
            if not self.live.drain(old, self.grace):
                log.warning(
                    "reload: %d calls still running on the previous backends after %.1fs; "
                    "closing them anyway",
                    self.live.in_flight(old),
                    self.grace,
                )
            bounded("closing the previous backends", old.catalog.close, CLOSE_TIMEOUT)
            # a successor's telemetry is the first application's: nothing else to shut
            release_catalog(app)
            log.info("reload: the previous backends are closed")

        self._retired = [g for g in self._retired if self.live.in_flight(g)] + [old]
        self._retiring = [t for t in self._retiring if t.is_alive()]
        thread = threading.Thread(target=run, name="crishim-retire", daemon=True)
        self._retiring.append(thread)
        thread.start()


def serve(
    config_path: str, *, listen: str | None = None, strict_plugins: bool | None = None
) -> int:
    """``crishim serve``: returns the exit status."""
    return Daemon(config_path, listen=listen, strict_plugins=strict_plugins).run()
