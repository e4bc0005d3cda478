"""The ``crishim`` command."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import click

from crishim import __version__, daemon, logs
from crishim.catalog import Catalog
from crishim.config import (
    CONFIG_ENV,
    SECRET_WORDS,
    ConfigError,
    Settings,
    command_line_socket,
    default_config_path,
    load_settings,
)
from crishim.container import Application, check_config, make_application
from crishim.errors import CrishimError
from crishim.manager import PluginError, PluginInfo, load_plugins
from crishim.types import (
    BackendType,
    FilterType,
    PullAuth,
    PullPolicyType,
    PullProgress,
    PullRequest,
)

log = logging.getLogger("crishim")

EXIT_CONFIG = daemon.EXIT_CONFIG
EXIT_RUNTIME = daemon.EXIT_RUNTIME


def _config_option(fn: Any) -> Any:
    """``--config FILE``: default ``$CRISHIM_CONFIG``, else /etc/crishim/config.yaml."""
    return click.option(
        "--config",
        "config_path",
        default=default_config_path,
        show_default=f"${CONFIG_ENV}, else /etc/crishim/config.yaml",
        type=click.Path(dir_okay=False),
        help="YAML config file.",
    )(fn)


_handler_option = click.option(
    "--runtime-handler",
    default="",
    metavar="HANDLER",
    help="The runtime handler to pull for (backends[].runtime_handlers); default: ''.",
)


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"crishim: {message}", err=True)
    sys.exit(code)


def _load(path: str) -> Settings:
    try:
        return load_settings(path)
    except ConfigError as exc:
        _fail(f"invalid config:\n{exc}", EXIT_CONFIG)


def _config_failed(exc: ConfigError | PluginError) -> NoReturn:
    _fail(f"invalid config:\n{exc}" if isinstance(exc, ConfigError) else str(exc), EXIT_CONFIG)


def _catalog(app: Application) -> Catalog:
    """The application's catalog; a config or plugin problem ends the command (exit 2)."""
    try:
        return app.catalog()
    except (ConfigError, PluginError) as exc:
        _config_failed(exc)


@click.group()
@click.version_option(__version__, prog_name="crishim")
def main() -> None:
    """A pluggable Kubernetes CRI image service."""


@main.command()
@_config_option
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
        _config_failed(exc)
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
@_config_option
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
        path = _load(config_path).socket_path
    else:
        try:
            path = command_line_socket(listen)
        except ValueError as exc:
            _fail(f"--listen: {exc}", EXIT_CONFIG)
    address = f"unix://{path}"
    with grpc.insecure_channel(f"unix:{path}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=IMAGE_SERVICE), timeout=timeout)
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
        _fail(str(exc), EXIT_CONFIG)
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


EXIT_INTERRUPTED = 130


@main.command("pull")
@_config_option
@click.option("--username", default=None, help="Registry username (password: --password-stdin).")
@click.option("--password-stdin", is_flag=True, help="Read the registry password from stdin.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Give up after this many seconds.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bars; print the image ID only.")
@_handler_option
@click.argument("image")
def pull_command(
    config_path: str,
    username: str | None,
    password_stdin: bool,
    timeout: float | None,
    quiet: bool,
    runtime_handler: str,
    image: str,
) -> None:
    """Pull IMAGE into the store, as PullImage does, without a server.

    For pre-loading nodes (air-gapped ones too): the first backend of the
    config that pulls fetches IMAGE into its store, where a server using the
    same config finds it. Prints the image ID.
    """
    import signal
    import threading
    import time

    from crishim import reference

    settings = _load(config_path)
    logs.configure("warning", settings.logging.format)
    try:
        ref = reference.parse(image)
    except reference.ReferenceError as exc:
        _fail(str(exc), EXIT_CONFIG)
    auth = None
    if password_stdin and username is None:
        _fail("--password-stdin needs --username", EXIT_CONFIG)
    if username is not None:
        password = sys.stdin.readline().rstrip("\r\n") if password_stdin else ""
        auth = PullAuth(username=username, password=password)
    app = make_application(settings)
    catalog = _catalog(app)
    try:
        catalog.route(runtime_handler)
    except CrishimError as exc:
        _fail(f"--runtime-handler: {exc}", EXIT_CONFIG)
    interrupted = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: interrupted.set())
    bars = _PullBars(enabled=not quiet)
    try:
        catalog.start()
        with bars:
            answer = catalog.pull_image(
                PullRequest(
                    ref=ref,
                    auth=auth,
                    deadline=None if timeout is None else time.monotonic() + timeout,
                    cancelled=interrupted.is_set,
                    progress=bars.update,
                    runtime_handler=runtime_handler,
                )
            )
    except CrishimError as exc:
        code = EXIT_INTERRUPTED if interrupted.is_set() else EXIT_RUNTIME
        _fail(str(exc), code)
    finally:
        signal.signal(signal.SIGINT, previous)
        catalog.close()
        app.shutdown_resources()
    click.echo(answer.record.id)


@main.command("import")
@_config_option
@click.option(
    "--name",
    default=None,
    metavar="REF",
    help="Name the image (for a file holding one image, or one it leaves unnamed).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bars; print image IDs only.")
@_handler_option
@click.argument("path", type=click.Path(exists=True, path_type=Path))
def import_command(
    config_path: str, name: str | None, quiet: bool, runtime_handler: str, path: Path
) -> None:
    """Load the images of PATH into the store of the first pulling backend.

    PATH is an OCI image layout (a directory or a tar file, as ``ctr images
    export`` or ``docker save`` since Docker 25 write it) or a legacy
    ``docker save`` archive. Every digest is verified. With the containerd
    backend the images land in containerd, named as its CRI names them.
    Prints each image's ID and name.
    """
    import signal
    import threading

    from crishim import reference
    from crishim.registry.archive import open_archive
    from crishim.registry.client import Deadline
    from crishim.types import Importer, ImportRequest

    settings = _load(config_path)
    logs.configure("warning", settings.logging.format)
    named = None
    if name is not None:
        try:
            named = reference.parse(name)
        except reference.ReferenceError as exc:
            _fail(f"--name: {exc}", EXIT_CONFIG)
        if named.kind is not reference.RefKind.NAME:
            _fail(f"--name: {name!r} is an image ID, not a name", EXIT_CONFIG)
    app = make_application(settings)
    catalog = _catalog(app)
    try:
        serving = catalog.route(runtime_handler).backends
    except CrishimError as exc:
        _fail(f"--runtime-handler: {exc}", EXIT_CONFIG)
    importer = next((h for h in serving if isinstance(h.backend, Importer)), None)
    if importer is None:
        _fail(
            "no configured backend imports images"
            + (f" for runtime handler {runtime_handler!r}" if runtime_handler else "")
            + f" (backends: {', '.join(h.name for h in serving)})",
            EXIT_CONFIG,
        )
    interrupted = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: interrupted.set())
    bars = _PullBars(enabled=not quiet)
    done: list[tuple[str, str]] = []
    try:
        with open_archive(path) as archive:
            if named is not None:
                if len(archive.images) != 1:
                    _fail(
                        f"{path} holds {len(archive.images)} images; --name names one",
                        EXIT_CONFIG,
                    )
                targets = [(named, archive.images[0])]
            else:
                unnamed = [i.digest for i in archive.images if not i.names]
                if unnamed:
                    _fail(
                        f"{path}: images without a name: {', '.join(unnamed)}; give --name",
                        EXIT_CONFIG,
                    )
                targets = [(ref, image) for image in archive.images for ref in image.names]
            catalog.start()
            assert isinstance(importer.backend, Importer)
            with bars:
                for ref, image in targets:
                    source = image.source(Deadline(None, interrupted.is_set, f"import {ref}"))
                    record = importer.backend.import_image(
                        ImportRequest(ref=ref, source=source, progress=bars.update)
                    )
                    done.append((record.id, str(ref)))
    except CrishimError as exc:
        code = EXIT_INTERRUPTED if interrupted.is_set() else EXIT_RUNTIME
        _fail(str(exc), code)
    finally:
        signal.signal(signal.SIGINT, previous)
        catalog.close()
        app.shutdown_resources()
    for image_id, ref_text in done:
        click.echo(image_id if quiet else f"{image_id}  {ref_text}")


@main.command("images")
@_config_option
@click.option("--quiet", "-q", is_flag=True, help="Print image IDs only.")
@click.option(
    "--debug",
    is_flag=True,
    help="Log at debug level (as logging.level: debug does): e.g. which filter hides an image.",
)
def images_command(config_path: str, quiet: bool, debug: bool) -> None:
    """List the images the configured backends hold, without a server.

    Images a filter hides are not listed; with --debug (or logging.level:
    debug) the log on stderr names each one, the filter and the reason.
    """
    settings = _load(config_path)
    debug = debug or settings.logging.level == "debug"
    logs.configure("debug" if debug else "warning", settings.logging.format)
    app = make_application(settings)
    catalog = _catalog(app)
    try:
        catalog.start()
        answers = catalog.list_images()
    except CrishimError as exc:
        _fail(str(exc), EXIT_RUNTIME)
    finally:
        catalog.close()
        app.shutdown_resources()
    rows = sorted(
        answers, key=lambda a: (a.record.repo_tags or a.record.repo_digests or (a.record.id,))[0]
    )
    if quiet:
        for answer in rows:
            click.echo(answer.record.id)
        return
    click.echo(f"{'IMAGE ID':<13}  {'SIZE':>9}  {'BACKEND':<12}  NAMES")
    for answer in rows:
        record = answer.record
        names = ", ".join(record.repo_tags or record.repo_digests) or "<none>"
        short = record.id.partition(":")[2][:13]
        click.echo(f"{short:<13}  {_human_size(record.size):>9}  {answer.backend:<12}  {names}")


@main.command("pulls")
@click.option(
    "--config",
    "config_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="The server's config, to find its status socket (default: $CRISHIM_CONFIG, else "
    "/etc/crishim/config.yaml when it exists).",
)
@click.option(
    "--socket",
    "socket_path",
    default=None,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The status socket itself (default: beside the CRI socket).",
)
@click.option("--watch", "-w", is_flag=True, help="Keep showing, with live progress bars.")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON, once.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=1.0,
    show_default=True,
    help="Seconds between refreshes with --watch.",
)
def pulls_command(
    config_path: str | None,
    socket_path: Path | None,
    watch: bool,
    as_json: bool,
    interval: float,
) -> None:
    """Show the running server's pulls: queued and running, per blob, with rates.

    Reads the server's status endpoint (server.status_listen), not the CRI
    socket; what a person needs while a node waits for a big image.
    """
    import signal
    import threading

    import httpx

    if socket_path is None:
        # the config other commands read ($CRISHIM_CONFIG, else the node's),
        # when there is one; else the default socket's neighbour
        if config_path is None and Path(default_config_path()).is_file():
            config_path = default_config_path()
        if config_path is not None:
            socket_path = _load(config_path).status_socket_path
        else:
            from crishim.config import DEFAULT_LISTEN, STATUS_SOCKET_NAME

            socket_path = Path(DEFAULT_LISTEN.removeprefix("unix://")).parent / STATUS_SOCKET_NAME
    if socket_path is None:
        _fail("the config turns the status endpoint off (server.status_listen: '')", EXIT_CONFIG)
    # one connection pool for every refresh of --watch
    client = httpx.Client(transport=httpx.HTTPTransport(uds=str(socket_path)), timeout=5)

    def fetch() -> dict[str, Any]:
        try:
            response = client.get("http://crishim/pulls")
            response.raise_for_status()
            data: dict[str, Any] = response.json()
            return data
        except (httpx.HTTPError, ValueError) as exc:
            client.close()
            _fail(f"cannot read the status endpoint at {socket_path}: {exc}", EXIT_RUNTIME)

    if as_json or not watch:
        status = fetch()
        client.close()
        if as_json:
            click.echo(json.dumps(status, indent=2, sort_keys=True))
        else:
            _print_pulls(status)
        return
    from rich.console import Console
    from rich.live import Live

    # Ctrl-C (SIGINT) and SIGTERM end the display between two refreshes, never
    # inside rich's start or stop: the terminal is left as it was found
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda signum, frame: stopping.set())
    console = Console()
    with client, Live(_pulls_view(fetch()), console=console, refresh_per_second=4) as live:
        while not stopping.wait(interval):
            live.update(_pulls_view(fetch()))


def _print_pulls(status: dict[str, Any]) -> None:
    click.echo(
        f"{status['running']} running (of {status['max_running']}), "
        f"{status['queued']} queued (of {status['max_queued']})"
    )
    if not status["pulls"]:
        return
    click.echo(f"{'ID':>4}  {'STATE':<11}  {'PROGRESS':>19}  {'RATE':>10}  {'TIME':>6}  REFERENCE")
    for pull in status["pulls"]:
        progress = f"{_human_size(pull['done'])}/{_human_size(pull['total'])}"
        rate = f"{_human_size(int(pull['rate']))}/s"
        click.echo(
            f"{pull['id']:>4}  {pull['state']:<11}  {progress:>19}  {rate:>10}  "
            f"{pull['elapsed']:>5.0f}s  {pull['reference']}"
        )


def _pulls_view(status: dict[str, Any]) -> Any:
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    table = Table.grid(padding=(0, 1))
    for _ in range(5):
        table.add_column()
    for pull in status["pulls"]:
        rate = f"{_human_size(int(pull['rate']))}/s"
        table.add_row(
            Text(pull["reference"], style="bold"),
            Text(pull["state"]),
            ProgressBar(total=max(pull["total"], 1), completed=pull["done"], width=30),
            Text(f"{_human_size(pull['done'])}/{_human_size(pull['total'])} {rate}"),
            Text(f"{pull['elapsed']:.0f}s"),
        )
        for blob in pull["blobs"]:
            short = blob["digest"].partition(":")[2][:12]
            table.add_row(
                Text(f"  {blob['kind']} {short}", style="dim"),
                Text(blob["state"], style="dim"),
                ProgressBar(total=max(blob["total"], 1), completed=blob["done"], width=30),
                Text(f"{_human_size(blob['done'])}/{_human_size(blob['total'])}", style="dim"),
                Text(""),
            )
    header = Text(
        f"{status['running']} running (of {status['max_running']}), "
        f"{status['queued']} queued (of {status['max_queued']})"
    )
    return Group(header, table)


def _human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1000
    return f"{size}B"  # pragma: no cover


class _PullBars:
    """A progress bar per blob of a pull (rich, on stderr); thread-safe."""

    def __init__(self, enabled: bool) -> None:
        import threading

        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TaskID,
            TextColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=Console(stderr=True),
            disable=not enabled,
        )
        self._tasks: dict[str, TaskID] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> _PullBars:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def update(self, event: PullProgress) -> None:
        with self._lock:
            task = self._tasks.get(event.digest)
            if task is None:
                task = self._progress.add_task("", total=event.total)
                self._tasks[event.digest] = task
        short = event.digest.partition(":")[2][:12]
        self._progress.update(
            task, description=f"{event.kind:<6} {short} {event.state}", completed=event.done
        )


if __name__ == "__main__":  # pragma: no cover
    main()
