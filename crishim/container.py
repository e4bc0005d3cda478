"""Building the objects from one validated config: dependency-injector.

pluggy finds the plugin *types*; this container builds the configured
*instances* (two ``oci-dir`` backends are two instances of one type), the
catalog over them, the servicer and the server. Nothing outside this module
imports dependency-injector; tests swap a provider with ``.override()``.
"""

from __future__ import annotations

import logging

from dependency_injector import containers, providers

from crishim import config as config_mod
from crishim.catalog import BackendHandle, Catalog, PinnedPolicy
from crishim.config import ConfigError, Settings
from crishim.manager import PluginManager, load_plugins
from crishim.server import Server
from crishim.service import ImageService
from crishim.types import Backend, BackendContext

log = logging.getLogger(__name__)


def build_backends(settings: Settings, plugins: PluginManager) -> list[BackendHandle]:
    """One instance per enabled ``backends[]`` entry, in config order."""
    types = plugins.backend_types()
    platform = settings.platform.resolve()
    handles: list[BackendHandle] = []
    problems: list[tuple[str, str]] = []
    for i, entry in enumerate(settings.backends):
        if not entry.enabled:
            continue
        backend_type = types.get(entry.type)
        if backend_type is None:
            known = ", ".join(sorted(types)) or "none"
            problems.append(
                (f"backends[{i}].type", f"unknown backend type {entry.type!r} (installed: {known})")
            )
            continue
        try:
            options = config_mod.validate_options(settings, i, backend_type.options_model)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        context = BackendContext(
            name=entry.name,
            platform=platform,
            config_dir=settings.base_dir,
            state_dir=settings.state_path / "backends" / entry.name,
        )
        backend: Backend = backend_type.factory(context, options)
        handles.append(BackendHandle(entry.name, entry.type, backend))
    if problems:
        raise ConfigError(settings.source, problems)
    if not handles:
        raise ConfigError(settings.source, [("backends", "every backend is disabled")])
    return handles


class Application(containers.DeclarativeContainer):
    """The whole shim, wired from ``settings``."""

    settings = providers.Dependency(instance_of=Settings)

    plugins = providers.ThreadSafeSingleton(
        load_plugins,
        disabled=settings.provided.plugins.disabled,
        strict=settings.provided.plugins.strict,
    )

    backends = providers.ThreadSafeSingleton(build_backends, settings=settings, plugins=plugins)

    pinned = providers.ThreadSafeSingleton(PinnedPolicy, settings.provided.pinned)

    catalog = providers.ThreadSafeSingleton(Catalog, backends=backends, pinned=pinned)

    service = providers.ThreadSafeSingleton(
        ImageService,
        catalog=catalog,
        max_send_message_size=settings.provided.server.max_send_message_size,
    )

    server = providers.ThreadSafeSingleton(
        Server,
        servicer=service,
        socket_path=settings.provided.socket_path,
        workers=settings.provided.server.workers,
        max_recv_message_size=settings.provided.server.max_recv_message_size,
        max_send_message_size=settings.provided.server.max_send_message_size,
        socket_mode=settings.provided.server.socket_mode,
    )


def make_application(settings: Settings, *, strict_plugins: bool | None = None) -> Application:
    """A container for ``settings``; building it checks plugins and options."""
    if strict_plugins is not None and strict_plugins != settings.plugins.strict:
        plugins = settings.plugins.model_copy(update={"strict": strict_plugins})
        settings = settings.model_copy(update={"plugins": plugins})
    app = Application(settings=settings)
    return app
