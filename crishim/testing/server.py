"""Run a real crishim server on a temporary unix socket, for tests.

Backend authors use this (directly, or through the pytest plugin in
:mod:`crishim.testing.pytest_plugin`) to test their plugin through the
same gRPC path kubelet uses::

    with running_server({"backends": [{"name": "b", "type": "my-type",
                                        "options": {...}}]}) as shim:
        shim.images.ImageStatus(api_pb2.ImageStatusRequest(...))
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc
from grpc_health.v1 import health_pb2_grpc

from crishim.catalog import Catalog
from crishim.config import parse_settings
from crishim.container import Application, make_application, started
from crishim.cri.runtime.v1 import api_pb2, api_pb2_grpc
from crishim.server import Server

__all__ = ["RunningShim", "running_server", "short_tempdir"]


@dataclass
class RunningShim:
    """A started server and client stubs connected to it.

    ``images`` is the generated CRI client (``crishim.cri.runtime.v1``
    ``ImageServiceStub``) on the server's socket, for any call; the methods
    below are the common ones, each with a 30 s deadline, raising
    ``grpc.RpcError`` on a non-OK status (``exc.code()``,
    ``exc.details()``). ``catalog`` is the server's catalog: its
    ``backends`` hold the backend objects, for checks from inside.

    Example::

        import grpc

        with running_server(config) as shim:
            image = shim.status("example.com/app:1.0").image
            assert image.uid.value == 1000
            assert [i.id for i in shim.list("example.com/app:1.0")] == [image.id]
            try:
                shim.remove("example.com/app:1.0")
            except grpc.RpcError as exc:
                assert exc.code() is grpc.StatusCode.FAILED_PRECONDITION
    """

    app: Application
    server: Server
    catalog: Catalog
    socket_path: Path
    channel: grpc.Channel
    images: api_pb2_grpc.ImageServiceStub
    health: health_pb2_grpc.HealthStub

    def status(self, ref: str, verbose: bool = False) -> api_pb2.ImageStatusResponse:
        """ImageStatus for ``ref``; raises grpc.RpcError on a non-OK status."""
        request = api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=ref), verbose=verbose)
        return cast(api_pb2.ImageStatusResponse, self.images.ImageStatus(request, timeout=30))

    def list(self, ref: str = "") -> list[api_pb2.Image]:
        """ListImages, with ``ref`` as the filter when given."""
        request = api_pb2.ListImagesRequest()
        if ref:
            request.filter.image.image = ref
        return list(self.images.ListImages(request, timeout=30).images)

    def remove(self, ref: str) -> api_pb2.RemoveImageResponse:
        """RemoveImage of ``ref``; an absent image is OK, as the CRI says."""
        request = api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=ref))
        return cast(api_pb2.RemoveImageResponse, self.images.RemoveImage(request, timeout=30))

    def fsinfo(self) -> api_pb2.ImageFsInfoResponse:
        """ImageFsInfo: ``image_filesystems`` has one entry per mountpoint."""
        response = self.images.ImageFsInfo(api_pb2.ImageFsInfoRequest(), timeout=30)
        return cast(api_pb2.ImageFsInfoResponse, response)


#: Room a socket file name inside a short temp dir needs (``/crishim.sock``
#: and mkdtemp's random part), under the 107 bytes a unix socket path holds.
_SOCKET_ROOM = 40
_MAX_SOCKET_PATH = 107


def short_tempdir(prefix: str = "crishim-") -> Path:
    """A new directory whose path is short enough for unix sockets inside it.

    A socket path is limited to 107 bytes, which pytest's ``tmp_path`` can
    exceed. The directory is made under ``TMPDIR`` (Python's temp dir) when
    that leaves room for a socket path, else under ``/tmp``. The caller
    removes it (``shutil.rmtree``).

    Example::

        import shutil

        root = short_tempdir()
        try:
            start_my_daemon(socket=root / "daemon.sock")
        finally:
            shutil.rmtree(root, ignore_errors=True)
    """
    base = tempfile.gettempdir()
    if len(os.fsencode(base)) + len(prefix) + _SOCKET_ROOM > _MAX_SOCKET_PATH:
        base = "/tmp"
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


@contextlib.contextmanager
def running_server(
    config: Mapping[str, Any],
    *,
    base_dir: Path | None = None,
    extra_plugins: Sequence[tuple[str, object]] = (),
    grace: float = 1.0,
    overrides: Mapping[str, object] | None = None,
) -> Iterator[RunningShim]:
    """Build crishim from a config mapping, serve it, yield a :class:`RunningShim`.

    * ``config``: what a config file holds, as a mapping (``backends``,
      ``filters``, ``platform``, ...), validated as a file would be.
      ``server.listen`` is replaced by a fresh socket in a temporary
      directory; ``state_dir`` defaults to one there too.
    * ``base_dir``: where relative paths in the config resolve (the
      directory a config file would be in); default: the current directory.
    * ``extra_plugins``: ``(name, plugin)`` pairs registered next to the
      installed plugins, for a plugin under test that is not installed
      (a module, or an object whose methods are hook implementations).
    * ``grace``: seconds in-flight calls get when the server stops.
    * ``overrides``: container providers replaced by name with fixed
      objects, e.g. ``{"span_exporter": InMemorySpanExporter()}``.

    Every backend's ``start`` has run when the stubs are yielded. On exit
    the server stops, the catalog closes (every backend's ``close``), the
    container's resources shut down (spans and metrics still held are
    exported) and the temporary directory is removed.

    Raises, before yielding: :class:`crishim.config.ConfigError` for an
    invalid config or options (its message names the key, e.g.
    ``backends[0].options.path: required key is missing``) or an unknown
    type; :class:`crishim.manager.PluginError` when plugins contradict
    each other, or one fails to load under ``plugins.strict``; whatever a
    backend's ``start`` raises (:class:`crishim.errors.BackendError` by
    convention); ``grpc.FutureTimeoutError`` if the server does not answer
    within 10 s.

    Example::

        from crishim.testing.server import running_server

        config = {"backends": [{"name": "mine", "type": "my-type", "options": {"path": "data"}}]}
        with running_server(config, base_dir=tmp_path, extra_plugins=[("mine", my_plugin)]) as shim:
            assert shim.status("example.com/app:1.0").HasField("image")
    """
    sockdir = short_tempdir()
    try:
        with _serving(sockdir, config, base_dir, extra_plugins, grace, overrides) as shim:
            yield shim
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)


@contextlib.contextmanager
def _serving(
    sockdir: Path,
    config: Mapping[str, Any],
    base_dir: Path | None,
    extra_plugins: Sequence[tuple[str, object]],
    grace: float,
    overrides: Mapping[str, object] | None,
) -> Iterator[RunningShim]:
    data = dict(config)
    data["server"] = {**dict(config.get("server", {})), "listen": f"unix://{sockdir}/crishim.sock"}
    data.setdefault("state_dir", str(sockdir / "state"))
    settings = parse_settings(data, source="<test config>", base_dir=base_dir)
    app = make_application(settings)
    if extra_plugins:
        from dependency_injector import providers

        from crishim.manager import load_plugins

        app.plugins.override(
            providers.ThreadSafeSingleton(
                load_plugins,
                disabled=settings.plugins.disabled,
                strict=settings.plugins.strict,
                extra=list(extra_plugins),
            )
        )
    for name, value in (overrides or {}).items():
        from dependency_injector import providers

        getattr(app, name).override(providers.Object(value))
    with started(app, grace=grace) as running:
        server = running.serve()
        channel = grpc.insecure_channel(f"unix:{settings.socket_path}")
        try:
            grpc.channel_ready_future(channel).result(timeout=10)
            yield RunningShim(
                app=app,
                server=server,
                catalog=running.catalog,
                socket_path=settings.socket_path,
                channel=channel,
                images=api_pb2_grpc.ImageServiceStub(channel),
                health=health_pb2_grpc.HealthStub(channel),
            )
        finally:
            channel.close()
