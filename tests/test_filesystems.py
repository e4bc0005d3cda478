"""ImageFsInfo: which filesystem comes first, de-duplication, container filesystems.

kubelet reads only the first ``image_filesystems`` entry, and takes
``container_filesystems`` (a split image filesystem, KEP-4191) from the
image service too. The rules, through the real socket:

* the first entry is the filesystem of the first pulling backend (where
  PullImage puts new images), then the others in configured order;
* one entry per mountpoint: image usage of backends sharing a filesystem is
  summed; a container filesystem is reported once, as the first backend
  reporting it says;
* ``container_filesystems`` come from backends that know them (the ``cri``
  backend passes its upstream's on; others report none).

Backends that report chosen filesystems are a small test plugin (``fs``):
tests may not create filesystems, and the rules are the catalog's.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from cri_helpers import cri_backend, endpoint_of
from pydantic import Field

from crishim import hookimpl
from crishim.cri.runtime.v1 import api_pb2
from crishim.model import FilesystemUsage
from crishim.oci.layout import mountpoint_of
from crishim.testing.server import RunningShim, running_server
from crishim.types import BackendContext, BackendOptions, BackendType, IndexedBackend

Server = Callable[..., RunningShim]


class FsOptions(BackendOptions):
    #: (mountpoint, used bytes, inodes, container?) of each filesystem reported.
    filesystems: list[tuple[str, int, int, bool]] = Field(default_factory=list)


class FsBackend(IndexedBackend):
    """Serves no image; reports the filesystems its options list."""

    def __init__(self, context: BackendContext, options: FsOptions) -> None:
        super().__init__(context)
        self.usages = tuple(
            FilesystemUsage(mount, used, inodes, 1000 + i, container=container)
            for i, (mount, used, inodes, container) in enumerate(options.filesystems)
        )

    def filesystem_usage(self) -> tuple[FilesystemUsage, ...]:
        return self.usages


class FsPlugin:
    @hookimpl
    def crishim_backend_types(self) -> list[BackendType]:
        return [BackendType("fs", FsBackend, FsOptions)]


PLUGINS = [("fs", FsPlugin())]


def fs(name: str, *filesystems: tuple[str, int, int, bool]) -> dict[str, Any]:
    return {"name": name, "type": "fs", "options": {"filesystems": [list(f) for f in filesystems]}}


def cache(store: Path) -> dict[str, Any]:
    return {"name": "cache", "type": "registry-cache", "options": {"path": str(store)}}


def fsinfo(shim: RunningShim) -> tuple[list[tuple[str, int, int]], list[tuple[str, int, int]]]:
    response = shim.images.ImageFsInfo(api_pb2.ImageFsInfoRequest(), timeout=30)
    for usage in (*response.image_filesystems, *response.container_filesystems):
        assert usage.timestamp > 0
    return tuple(  # type: ignore[return-value]
        [(u.fs_id.mountpoint, u.used_bytes.value, u.inodes_used.value) for u in group]
        for group in (response.image_filesystems, response.container_filesystems)
    )


def test_the_first_pulling_backends_filesystem_comes_first(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store_mount = mountpoint_of(tmp_path)
    backends = [
        fs("before", ("/crishim-test/a", 100, 10, False)),
        cache(store),
        fs("shares", (store_mount, 7, 3, False), ("/crishim-test/c", 50, 5, True)),
        fs("after", ("/crishim-test/c", 99, 9, True), ("/crishim-test/b", 1, 1, False)),
    ]
    with running_server({"backends": backends}, extra_plugins=PLUGINS) as shim:
        cache_usage = shim.catalog.backends[1].backend.filesystem_usage()[0]
        images, containers = fsinfo(shim)
        assert images == [
            (store_mount, cache_usage.used_bytes + 7, cache_usage.inodes_used + 3),
            ("/crishim-test/a", 100, 10),
            ("/crishim-test/b", 1, 1),
        ]
        # one container filesystem per mountpoint: the first backend's
        assert containers == [("/crishim-test/c", 50, 5)]


def test_without_a_pulling_backend_the_order_is_the_configs() -> None:
    backends = [
        fs("one", ("/crishim-test/a", 1, 1, False)),
        fs("two", ("/crishim-test/b", 2, 2, False), ("/crishim-test/a", 3, 3, False)),
    ]
    with running_server({"backends": backends}, extra_plugins=PLUGINS) as shim:
        assert fsinfo(shim) == ([("/crishim-test/a", 4, 4), ("/crishim-test/b", 2, 2)], [])


def test_the_default_handlers_puller_comes_first(tmp_path: Path) -> None:
    """Pulls without a handler (kubelet's default) land in the default handler's backend."""
    vm = cache(tmp_path / "vm") | {"name": "vm", "runtime_handlers": ["kata"]}
    backends = [
        vm,
        fs("host-fs", ("/crishim-test/host", 5, 5, False)) | {"runtime_handlers": [""]},
        cache(tmp_path / "host") | {"name": "host"},
    ]
    with running_server({"backends": backends}, extra_plugins=PLUGINS) as shim:
        images, _ = fsinfo(shim)
        # vm and host share the test's filesystem: summed, first because host pulls for ""
        assert [mount for mount, _, _ in images] == [mountpoint_of(tmp_path), "/crishim-test/host"]


def test_the_cri_backend_passes_container_filesystems_on() -> None:
    upstream_backends = [
        fs("up", ("/crishim-test/images", 10, 2, False), ("/crishim-test/containers", 30, 4, True))
    ]
    with (
        running_server({"backends": upstream_backends}, extra_plugins=PLUGINS) as upstream,
        running_server({"backends": [cri_backend(endpoint_of(upstream))]}) as shim,
    ):
        assert fsinfo(shim) == fsinfo(upstream)
        assert fsinfo(shim) == (
            [("/crishim-test/images", 10, 2)],
            [("/crishim-test/containers", 30, 4)],
        )


def test_backends_that_know_no_container_filesystem_report_none(tmp_path: Path) -> None:
    with running_server({"backends": [cache(tmp_path / "store")]}) as shim:
        images, containers = fsinfo(shim)
        assert [mount for mount, _, _ in images] == [mountpoint_of(tmp_path)]
        assert containers == []
