"""What the ``crishim`` commands share: options, failing with an exit status, sizes."""

from __future__ import annotations

import sys
from typing import Any, NoReturn

import click

from crishim.catalog import Catalog
from crishim.config import CONFIG_ENV, ConfigError, Settings, default_config_path, load_settings
from crishim.container import Application
from crishim.daemon import EXIT_CONFIG, EXIT_RUNTIME
from crishim.manager import PluginError

__all__ = ["EXIT_CONFIG", "EXIT_INTERRUPTED", "EXIT_RUNTIME"]

#: A pull or import Ctrl-C stopped (128 + SIGINT, as a shell reports it).
EXIT_INTERRUPTED = 130


def config_option(fn: Any) -> Any:
    """``--config FILE``: default ``$CRISHIM_CONFIG``, else /etc/crishim/config.yaml."""
    return click.option(
        "--config",
        "config_path",
        default=default_config_path,
        show_default=f"${CONFIG_ENV}, else /etc/crishim/config.yaml",
        type=click.Path(dir_okay=False),
        help="YAML config file.",
    )(fn)


handler_option = click.option(
    "--runtime-handler",
    default="",
    metavar="HANDLER",
    help="The runtime handler to pull for (backends[].runtime_handlers); default: ''.",
)


def fail(message: str, code: int) -> NoReturn:
    click.echo(f"crishim: {message}", err=True)
    sys.exit(code)


def load(path: str) -> Settings:
    try:
        return load_settings(path)
    except ConfigError as exc:
        fail(f"invalid config:\n{exc}", EXIT_CONFIG)


def config_failed(exc: ConfigError | PluginError) -> NoReturn:
    fail(f"invalid config:\n{exc}" if isinstance(exc, ConfigError) else str(exc), EXIT_CONFIG)


def catalog_of(app: Application) -> Catalog:
    """The application's catalog; a config or plugin problem ends the command (exit 2)."""
    try:
        catalog: Catalog = app.catalog()
    except (ConfigError, PluginError) as exc:
        config_failed(exc)
    return catalog


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1000
    return f"{size}B"  # pragma: no cover
