"""The ``crishim`` command."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

import click

from crishim import __version__, logs
from crishim.config import ConfigError, Settings, load_settings
from crishim.container import make_application
from crishim.errors import CrishimError
from crishim.manager import PluginError, PluginInfo, load_plugins
from crishim.server import SocketError, run_until_signalled

log = logging.getLogger("crishim")

EXIT_CONFIG = 2
EXIT_RUNTIME = 1


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"crishim: {message}", err=True)
    sys.exit(code)


def _load(path: str) -> Settings:
    try:
        return load_settings(path)
    except ConfigError as exc:
        _fail(f"invalid config:\n{exc}", EXIT_CONFIG)


@click.group()
@click.version_option(__version__, prog_name="crishim")
def main() -> None:
    """A pluggable Kubernetes CRI image service."""


@main.command()
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="YAML config file.",
)
@click.option(
    "--listen",
    default=None,
    metavar="unix:///PATH",
    help="Socket address; overrides server.listen.",
)
@click.option(
    "--strict-plugins",
    is_flag=True,
    default=None,
    help="A plugin that fails to load stops start-up.",
)
def serve(config_path: str, listen: str | None, strict_plugins: bool | None) -> None:
    """Serve runtime.v1.ImageService on a unix socket until SIGTERM/SIGINT."""
    settings = _load(config_path)
    if listen is not None:
        try:
            settings = settings.with_listen(listen)
        except ValueError as exc:
            _fail(f"--listen: {exc}", EXIT_CONFIG)
    logs.configure(settings.logging.level, settings.logging.format)
    app = make_application(settings, strict_plugins=strict_plugins)
    try:
        catalog = app.catalog()
    except (ConfigError, PluginError) as exc:
        _fail(f"invalid config:\n{exc}" if isinstance(exc, ConfigError) else str(exc), EXIT_CONFIG)
    try:
        catalog.start()
        server = app.server()
        server.start()
    except (SocketError, CrishimError) as exc:
        catalog.close()
        _fail(str(exc), EXIT_RUNTIME)
    try:
        run_until_signalled(server, settings.server.grace_period)
    finally:
        catalog.close()


@main.command("check-config")
@click.argument("config_path", type=click.Path(dir_okay=False))
def check_config(config_path: str) -> None:
    """Validate a config file; print the backends in order and the plugins found."""
    settings = _load(config_path)
    app = make_application(settings)
    try:
        plugins = app.plugins()
        handles = app.backends()
    except (ConfigError, PluginError) as exc:
        _fail(f"invalid config:\n{exc}" if isinstance(exc, ConfigError) else str(exc), EXIT_CONFIG)
    types = plugins.backend_types()
    click.echo(f"config: {settings.source}: OK")
    click.echo(f"listen: unix://{settings.socket_path}")
    click.echo(f"platform: {settings.platform.resolve()}")
    click.echo("backends (consulted in this order):")
    entries = {entry.name: entry for entry in settings.backends}
    for i, handle in enumerate(handles, 1):
        bt = types[handle.type]
        origin = f"{bt.package} {bt.version}".strip() or "unknown package"
        options = json.dumps(entries[handle.name].options, sort_keys=True, default=str)
        click.echo(f"  {i}. {handle.name}: type {handle.type} ({origin}) options {options}")
    for entry in settings.backends:
        if not entry.enabled:
            click.echo(f"  -  {entry.name}: type {entry.type} (disabled)")
    if settings.pinned:
        click.echo("pinned: " + ", ".join(settings.pinned))
    _echo_plugins(plugins.infos)


@main.command("plugins")
def list_plugins() -> None:
    """List the plugins installed, their backend types, package and version."""
    try:
        pm = load_plugins()
        types = pm.backend_types()
    except PluginError as exc:
        _fail(str(exc), EXIT_CONFIG)
    _echo_plugins(pm.infos)
    click.echo("backend types:")
    for name, bt in sorted(types.items()):
        origin = f"{bt.package} {bt.version}".strip() or "unknown package"
        click.echo(f"  {name}: {origin}" + (f" - {bt.description}" if bt.description else ""))


def _echo_plugins(infos: Sequence[PluginInfo]) -> None:
    click.echo("plugins (entry-point group crishim.plugins):")
    for info in infos:
        if info.disabled:
            state = "disabled"
        elif info.loaded:
            state = "loaded"
        else:
            state = f"FAILED: {info.error}"
        origin = f"{info.package} {info.version}".strip()
        click.echo(f"  {info.name} = {info.value} [{origin}] {state}")


if __name__ == "__main__":  # pragma: no cover
    main()
