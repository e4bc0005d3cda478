"""The ``crishim`` command: the group, ``serve``, and the commands about the config and
plugins; ``pull``, ``import`` and ``images`` are in :mod:`crishim.cli_store`, ``pulls``
in :mod:`crishim.cli_pulls`."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping, Sequence

import click

from crishim import __version__, daemon
from crishim.cli_common import EXIT_CONFIG, EXIT_RUNTIME, config_failed, config_option, fail, load
from crishim.cli_pulls import pulls_command
from crishim.cli_store import images_command, import_command, pull_command
from crishim.config import SECRET_WORDS, ConfigError, command_line_socket, default_config_path
from crishim.container import check_config
from crishim.manager import PluginError, PluginInfo, load_plugins
from crishim.types import BackendType, FilterType, PullPolicyType

log = logging.getLogger("crishim")


@click.group()
@click.version_option(__version__, prog_name="crishim")
def main() -> None:
    """A pluggable Kubernetes CRI image service."""


@main.command()
@config_option
@click.option(
    "--listen",
    default=None,
    metavar="unix:///PATH",
    help="Socket address; overrides server.listen (a relative path: to the working directory).",
)
@click.option(
    "--strict-plugins",
    is_flag=True,
    default=None,
    help="A plugin that fails to load stops start-up.",
)
def serve(config_path: str, listen: str | None, strict_plugins: bool | None) -> None:
    """Serve runtime.v1.ImageService on a unix socket.

    Until SIGTERM or SIGINT (in-flight calls get server.grace_period);
    SIGHUP re-reads the config and swaps in its backends, filters, pins
    and logging without dropping the socket.
    """
    sys.exit(daemon.serve(config_path, listen=listen, strict_plugins=strict_plugins))


def _redact(value: object, key: str = "") -> object:
    """Config values as printed: anything under a secret-sounding key is masked."""
    if isinstance(value, dict):
        return {k: _redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v, key) for v in value]
    lowered = key.lower()
    if value and any(word in lowered for word in SECRET_WORDS) and not lowered.endswith("_file"):
        return "<redacted>"
    return value


@main.command("check-config")
@click.argument("config_path", required=False, type=click.Path(dir_okay=False))
def check_config_command(config_path: str | None) -> None:
    """Make every check serve makes; print the backends in order and the plugins found.

    Every problem is reported, each with file, key, reason and the value
    given; the exit status is 2 when there is any. CONFIG_PATH defaults to
    $CRISHIM_CONFIG, else /etc/crishim/config.yaml.
    """
    path = config_path or default_config_path()
    _quiet_plugin_loading()
    try:
        settings, app = check_config(path)
        plugins = app.plugins()
        handles = app.backends()
        filters = app.filters()
        tracing_setup, metrics_setup = app.tracing_setup(), app.metrics_setup()
    except (ConfigError, PluginError) as exc:
        config_failed(exc)
    types = plugins.backend_types()
    click.echo(f"config: {settings.source}: OK")
    click.echo(f"listen: unix://{settings.socket_path}")
    click.echo(f"platform: {settings.platform.resolve()}")
    click.echo("backends (consulted in this order):")
    entries = {entry.name: entry for entry in settings.backends}
    for i, handle in enumerate(handles, 1):
        bt = types[handle.type]
        origin = f"{bt.package} {bt.version}".strip() or "unknown package"
        options = json.dumps(_redact(entries[handle.name].options), sort_keys=True, default=str)
        click.echo(f"  {i}. {handle.name}: type {handle.type} ({origin}) options {options}")
    for entry in settings.backends:
        if not entry.enabled:
            click.echo(f"  -  {entry.name}: type {entry.type} (disabled)")
    default_chain = " (the default chain)" if settings.filters is None else ""
    click.echo(f"filters (applied in this order){default_chain}:")
    for i, fh in enumerate(filters, 1):
        click.echo(f"  {i}. {fh.name}: type {fh.type}")
    if not filters:
        click.echo("  none")
    if settings.pinned:
        click.echo("pinned: " + ", ".join(settings.pinned))
    click.echo(f"tracing: {tracing_setup.describe()}")
    click.echo(f"metrics: {metrics_setup.describe()}")
    _echo_plugins(plugins.infos)
    app.shutdown_resources()


@main.group("config")
def config_group() -> None:
    """The config file."""


@config_group.command("default")
def config_default() -> None:
    """Print a commented default config for a node (it validates as it is).

    crishim config default > /etc/crishim/config.yaml
    """
    click.echo(default_config_text(), nl=False)


def default_config_text() -> str:
    from importlib.resources import files

    return files("crishim").joinpath("default-config.yaml").read_text(encoding="utf-8")


@main.command("health")
@config_option
@click.option(
    "--listen", default=None, metavar="unix:///PATH", help="Socket to ask (default: the config's)."
)
@click.option(
    "--timeout", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True
)
def health_command(config_path: str, listen: str | None, timeout: float) -> None:
    """Ask the server's gRPC health service; exit 0 when it is SERVING.

    A probe for systemd, monitoring or a human: prints SERVING (the backends
    have started and the socket answers), NOT_SERVING (it is stopping) or
    why it could not ask; exit status 1 unless SERVING.
    """
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from crishim.cri_messages import IMAGE_SERVICE

    if listen is None:
        path = load(config_path).socket_path
    else:
        try:
            path = command_line_socket(listen)
        except ValueError as exc:
            fail(f"--listen: {exc}", EXIT_CONFIG)
    address = f"unix://{path}"
    with grpc.insecure_channel(f"unix:{path}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(
                health_pb2.HealthCheckRequest(service=IMAGE_SERVICE), timeout=timeout
            )
        except grpc.RpcError as exc:
            click.echo(f"{address}: {exc.code().name}: {exc.details()}")
            sys.exit(EXIT_RUNTIME)
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    click.echo(f"{address}: {status}")
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        sys.exit(EXIT_RUNTIME)


@main.command("plugins")
def list_plugins() -> None:
    """List the plugins installed and the types they offer, with package and version."""
    _quiet_plugin_loading()
    try:
        pm = load_plugins()
        kinds: dict[str, Mapping[str, BackendType | FilterType | PullPolicyType]] = {
            "backend types": pm.backend_types(),
            "filter types": pm.filter_types(),
            "pull policy types": pm.pull_policy_types(),
        }
    except PluginError as exc:
        fail(str(exc), EXIT_CONFIG)
    _echo_plugins(pm.infos)
    for title, types in kinds.items():
        click.echo(f"{title}:")
        for name, kind in sorted(types.items()):
            origin = f"{kind.package} {kind.version}".strip() or "unknown package"
            described = f" - {kind.description}" if kind.description else ""
            click.echo(f"  {name}: {origin}{described}")


def _quiet_plugin_loading() -> None:
    """The listing says which plugins failed (and a config error names the one
    it needs): no log line repeating it on stderr."""
    logging.getLogger("crishim.manager").setLevel(logging.CRITICAL)


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


for _command in (pull_command, import_command, images_command, pulls_command):
    main.add_command(_command)


if __name__ == "__main__":  # pragma: no cover
    main()
