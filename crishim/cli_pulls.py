"""``crishim pulls``: the running server's pulls, read from its status endpoint."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Any

import click

from crishim.cli_common import EXIT_CONFIG, EXIT_RUNTIME, fail, human_size, load
from crishim.config import DEFAULT_LISTEN, STATUS_SOCKET_NAME, default_config_path


@click.command("pulls")
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
    import httpx

    if socket_path is None:
        # the config other commands read ($CRISHIM_CONFIG, else the node's),
        # when there is one; else the default socket's neighbour
        if config_path is None and Path(default_config_path()).is_file():
            config_path = default_config_path()
        if config_path is not None:
            socket_path = load(config_path).status_socket_path
        else:
            socket_path = Path(DEFAULT_LISTEN.removeprefix("unix://")).parent / STATUS_SOCKET_NAME
    if socket_path is None:
        fail("the config turns the status endpoint off (server.status_listen: '')", EXIT_CONFIG)
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
            fail(f"cannot read the status endpoint at {socket_path}: {exc}", EXIT_RUNTIME)

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
        progress = f"{human_size(pull['done'])}/{human_size(pull['total'])}"
        rate = f"{human_size(int(pull['rate']))}/s"
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
        rate = f"{human_size(int(pull['rate']))}/s"
        table.add_row(
            Text(pull["reference"], style="bold"),
            Text(pull["state"]),
            ProgressBar(total=max(pull["total"], 1), completed=pull["done"], width=30),
            Text(f"{human_size(pull['done'])}/{human_size(pull['total'])} {rate}"),
            Text(f"{pull['elapsed']:.0f}s"),
        )
        for blob in pull["blobs"]:
            short = blob["digest"].partition(":")[2][:12]
            table.add_row(
                Text(f"  {blob['kind']} {short}", style="dim"),
                Text(blob["state"], style="dim"),
                ProgressBar(total=max(blob["total"], 1), completed=blob["done"], width=30),
                Text(f"{human_size(blob['done'])}/{human_size(blob['total'])}", style="dim"),
                Text(""),
            )
    header = Text(
        f"{status['running']} running (of {status['max_running']}), "
        f"{status['queued']} queued (of {status['max_queued']})"
    )
    return Group(header, table)
