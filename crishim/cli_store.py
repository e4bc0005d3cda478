"""``crishim pull``, ``import`` and ``images``: the store, without a server.

Each builds the application from the config, starts its backends through
:func:`crishim.container.started` (which closes them and flushes telemetry
whatever happens) and does its one thing.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path

import click

from crishim import logs, reference
from crishim.cli_common import (
    EXIT_CONFIG,
    EXIT_INTERRUPTED,
    EXIT_RUNTIME,
    catalog_of,
    config_option,
    fail,
    handler_option,
    human_size,
    load,
)
from crishim.container import make_application, started
from crishim.errors import CrishimError
from crishim.types import Importer, ImportRequest, PullAuth, PullProgress, PullRequest


@click.command("pull")
@config_option
@click.option("--username", default=None, help="Registry username (password: --password-stdin).")
@click.option("--password-stdin", is_flag=True, help="Read the registry password from stdin.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Give up after this many seconds.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bars; print the image ID only.")
@handler_option
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
    settings = load(config_path)
    logs.configure("warning", settings.logging.format)
    try:
        ref = reference.parse(image)
    except reference.ReferenceError as exc:
        fail(str(exc), EXIT_CONFIG)
    auth = None
    if password_stdin and username is None:
        fail("--password-stdin needs --username", EXIT_CONFIG)
    if username is not None:
        password = sys.stdin.readline().rstrip("\r\n") if password_stdin else ""
        auth = PullAuth(username=username, password=password)
    app = make_application(settings)
    catalog = catalog_of(app)
    try:
        catalog.route(runtime_handler)
    except CrishimError as exc:
        fail(f"--runtime-handler: {exc}", EXIT_CONFIG)
    interrupted = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: interrupted.set())
    bars = _PullBars(enabled=not quiet)
    try:
        with started(app), bars:
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
        fail(str(exc), code)
    finally:
        signal.signal(signal.SIGINT, previous)
    click.echo(answer.record.id)


@click.command("import")
@config_option
@click.option(
    "--name",
    default=None,
    metavar="REF",
    help="Name the image (for a file holding one image, or one it leaves unnamed).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bars; print image IDs only.")
@handler_option
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
    from crishim.registry.archive import open_archive
    from crishim.registry.client import Deadline

    settings = load(config_path)
    logs.configure("warning", settings.logging.format)
    named = None
    if name is not None:
        try:
            named = reference.parse(name)
        except reference.ReferenceError as exc:
            fail(f"--name: {exc}", EXIT_CONFIG)
        if named.kind is not reference.RefKind.NAME:
            fail(f"--name: {name!r} is an image ID, not a name", EXIT_CONFIG)
    app = make_application(settings)
    catalog = catalog_of(app)
    try:
        serving = catalog.route(runtime_handler).backends
    except CrishimError as exc:
        fail(f"--runtime-handler: {exc}", EXIT_CONFIG)
    importer = next((h for h in serving if isinstance(h.backend, Importer)), None)
    if importer is None:
        fail(
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
                    fail(
                        f"{path} holds {len(archive.images)} images; --name names one",
                        EXIT_CONFIG,
                    )
                targets = [(named, archive.images[0])]
            else:
                unnamed = [i.digest for i in archive.images if not i.names]
                if unnamed:
                    fail(
                        f"{path}: images without a name: {', '.join(unnamed)}; give --name",
                        EXIT_CONFIG,
                    )
                targets = [(ref, image) for image in archive.images for ref in image.names]
            assert isinstance(importer.backend, Importer)
            with started(app), bars:
                for ref, image in targets:
                    source = image.source(Deadline(None, interrupted.is_set, f"import {ref}"))
                    record = importer.backend.import_image(
                        ImportRequest(ref=ref, source=source, progress=bars.update)
                    )
                    done.append((record.id, str(ref)))
    except CrishimError as exc:
        code = EXIT_INTERRUPTED if interrupted.is_set() else EXIT_RUNTIME
        fail(str(exc), code)
    finally:
        signal.signal(signal.SIGINT, previous)
    for image_id, ref_text in done:
        click.echo(image_id if quiet else f"{image_id}  {ref_text}")


@click.command("images")
@config_option
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
    settings = load(config_path)
    debug = debug or settings.logging.level == "debug"
    logs.configure("debug" if debug else "warning", settings.logging.format)
    app = make_application(settings)
    catalog_of(app)  # a config or plugin problem: exit 2 before anything starts
    try:
        with started(app) as running:
            answers = running.catalog.list_images()
    except CrishimError as exc:
        fail(str(exc), EXIT_RUNTIME)
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
        click.echo(f"{short:<13}  {human_size(record.size):>9}  {answer.backend:<12}  {names}")


class _PullBars:
    """A progress bar per blob of a pull (rich, on stderr); thread-safe."""

    def __init__(self, enabled: bool) -> None:
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
