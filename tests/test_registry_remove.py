"""RemoveImage, ImageFsInfo and concurrent pulls with the registry-cache backend."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from registry.helpers import (
    blob_exists,
    cache_config,
    check_store,
    fsinfo,
    plain_endpoint,
    pull,
    usage_of,
)
from registry.images import RegistryImages
from registry.process import RegistryProcess
from registry.proxy import TamperingProxy

from crishim.testing.server import RunningShim

pytest_plugins = ["registry.fixtures"]

Server = Callable[..., RunningShim]


@pytest.fixture
def shim(crishim_server: Server, store: Path, registry: RegistryProcess) -> RunningShim:
    mirror = {"endpoints": [plain_endpoint(registry.url)]}
    return crishim_server(cache_config(store, {registry.host: mirror, "gcr.io": mirror}))


@pytest.fixture
def proxied(crishim_server: Server, store: Path, clean_proxy: TamperingProxy) -> RunningShim:
    """A server whose registry ``proxied.test`` is served through the proxy."""
    config = cache_config(store, {"proxied.test": {"endpoints": [plain_endpoint(clean_proxy.url)]}})
    return crishim_server(config)


def _small_names(registry: RegistryProcess) -> list[str]:
    return [
        f"{registry.host}/test/small:1",
        f"{registry.host}/test/small:also",
        "gcr.io/test/small:1",
    ]


def _pull_small_three_ways(shim: RunningShim, registry: RegistryProcess) -> None:
    for name in _small_names(registry):
        pull(shim, name)


# --------------------------------------------------------------------------- RemoveImage


@pytest.mark.parametrize(
    "which",
    ["tag", "other-registry-tag", "id", "id-prefix", "digest"],
)
def test_remove_by_any_name_removes_every_name_and_blob(
    shim: RunningShim,
    registry: RegistryProcess,
    images: RegistryImages,
    store: Path,
    which: str,
) -> None:
    _pull_small_three_ways(shim, registry)
    (image,) = shim.list()
    assert len(image.repo_tags) == 3
    ref = {
        "tag": f"{registry.host}/test/small:also",
        "other-registry-tag": "gcr.io/test/small:1",
        "id": images.small.id,
        "id-prefix": images.small.id[7:20],
        "digest": f"gcr.io/test/small@{images.small.manifest.digest}",
    }[which]
    shim.remove(ref)
    assert shim.list() == []
    for name in [*_small_names(registry), images.small.id]:
        assert shim.status(name).image.id == "", name
    assert check_store(store) == {}
    for digest in [*images.blob_digests(images.small), images.small.manifest.digest]:
        assert not blob_exists(store, digest), digest


def test_remove_is_idempotent(shim: RunningShim, registry: RegistryProcess) -> None:
    name = f"{registry.host}/test/small:1"
    pull(shim, name)
    shim.remove(name)
    shim.remove(name)
    shim.remove(f"{registry.host}/test/never-pulled:1")
    assert shim.list() == []


def test_five_racing_removes(
    shim: RunningShim, registry: RegistryProcess, images: RegistryImages, store: Path
) -> None:
    _pull_small_three_ways(shim, registry)
    pull(shim, f"{registry.host}/test/docker:1")
    refs = [*_small_names(registry), images.small.id, images.small.id]
    barrier = threading.Barrier(len(refs))

    def remove(ref: str) -> None:
        barrier.wait(timeout=10)
        shim.remove(ref)

    with ThreadPoolExecutor(len(refs)) as pool:
        for future in [pool.submit(remove, ref) for ref in refs]:
            future.result(timeout=60)
    assert [image.id for image in shim.list()] == [images.docker.id]
    names = check_store(store)
    assert set(names) == {
        f"{registry.host}/test/docker:1",
        f"{registry.host}/test/docker@{images.docker.manifest.digest}",
    }
    for digest in images.blob_digests(images.small):
        assert not blob_exists(store, digest)


def test_remove_keeps_blobs_another_image_uses(
    proxied: RunningShim, clean_proxy: TamperingProxy, images: RegistryImages, store: Path
) -> None:
    a, b = images.shared_a, images.shared_b
    base = a.layers[0].digest
    assert base == b.layers[0].digest
    pull(proxied, "proxied.test/test/shared-a:1")
    pull(proxied, "proxied.test/test/shared-b:1")
    assert clean_proxy.blob_gets(base) == 1, "a layer shared by two images is fetched once"
    proxied.remove("proxied.test/test/shared-a:1")
    assert [image.id for image in proxied.list()] == [b.id]
    check_store(store)
    assert blob_exists(store, base)
    for digest in (a.config.digest, a.layers[1].digest, a.manifest.digest):
        assert not blob_exists(store, digest)
    proxied.remove(b.id)
    assert not any((store / "blobs" / "sha256").iterdir())


def test_pull_survives_a_removal_deleting_its_blobs(
    proxied: RunningShim, clean_proxy: TamperingProxy, images: RegistryImages, store: Path
) -> None:
    """A removal that deletes a blob a running pull counted on: the pull fetches it again."""
    base = images.shared_a.layers[0].digest
    pull(proxied, "proxied.test/test/shared-a:1")
    clean_proxy.rate = 600  # bytes/s: shared-b's own blobs take about a second
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(pull, proxied, "proxied.test/test/shared-b:1")
        assert clean_proxy.blob_started.wait(20)
        proxied.remove("proxied.test/test/shared-a:1")
        assert not blob_exists(store, base)
        assert pending.result(timeout=60).image_ref == images.shared_b.id
    assert [image.id for image in proxied.list()] == [images.shared_b.id]
    check_store(store)
    assert clean_proxy.blob_gets(base) == 2


# --------------------------------------------------------------------------- ImageFsInfo


def test_fsinfo_follows_pulls_and_removals(
    shim: RunningShim, registry: RegistryProcess, store: Path
) -> None:
    empty = fsinfo(shim)
    assert empty == usage_of(store)
    pull(shim, f"{registry.host}/test/big:1")
    pull(shim, f"{registry.host}/test/small:1")
    after_pull = fsinfo(shim)
    assert after_pull == usage_of(store)
    assert after_pull[0] >= empty[0] + 3 * 1024 * 1024
    assert after_pull[1] == empty[1] + 8  # each: 2 layers, a config and a manifest
    shim.remove(f"{registry.host}/test/big:1")
    after_remove = fsinfo(shim)
    assert after_remove == usage_of(store)
    assert after_remove[1] == empty[1] + 4
    shim.remove(f"{registry.host}/test/small:1")
    assert fsinfo(shim) == usage_of(store) == empty


def test_fsinfo_is_a_running_total_not_a_walk(
    shim: RunningShim, registry: RegistryProcess, store: Path
) -> None:
    pull(shim, f"{registry.host}/test/small:1")
    before = fsinfo(shim)
    (store / "unrelated-file").write_bytes(b"x" * 100_000)
    assert fsinfo(shim) == before
    (fs,) = shim.fsinfo().image_filesystems
    assert store.resolve().is_relative_to(Path(fs.fs_id.mountpoint).resolve())


# --------------------------------------------------------------------------- concurrency


def test_concurrent_pulls_of_one_image_download_once(
    proxied: RunningShim, clean_proxy: TamperingProxy, images: RegistryImages, store: Path
) -> None:
    clean_proxy.rate = 8 * 1024 * 1024  # the big layer takes ~0.4 s: the pulls overlap
    ref = "proxied.test/test/big:1"
    barrier = threading.Barrier(4)

    def one() -> str:
        barrier.wait(timeout=10)
        return str(pull(proxied, ref).image_ref)

    with ThreadPoolExecutor(4) as pool:
        results = [f.result(timeout=60) for f in [pool.submit(one) for _ in range(4)]]
    assert results == [images.big.id] * 4
    for digest in images.blob_digests(images.big):
        assert clean_proxy.blob_gets(digest) == 1, digest
    check_store(store)
    (image,) = proxied.list()
    assert list(image.repo_tags) == [ref]


def test_concurrent_pulls_of_images_sharing_a_layer(
    proxied: RunningShim, clean_proxy: TamperingProxy, images: RegistryImages, store: Path
) -> None:
    clean_proxy.rate = 20_000
    with ThreadPoolExecutor(2) as pool:
        a = pool.submit(pull, proxied, "proxied.test/test/shared-a:1")
        b = pool.submit(pull, proxied, "proxied.test/test/shared-b:1")
        assert a.result(timeout=60).image_ref == images.shared_a.id
        assert b.result(timeout=60).image_ref == images.shared_b.id
    assert clean_proxy.blob_gets(images.shared_a.layers[0].digest) == 1
    assert {image.id for image in proxied.list()} == {images.shared_a.id, images.shared_b.id}
    check_store(store)


def test_pull_and_remove_race_leaves_a_valid_store(
    shim: RunningShim, registry: RegistryProcess, store: Path
) -> None:
    name = f"{registry.host}/test/shared-a:1"
    other = f"{registry.host}/test/shared-b:1"

    def pulls() -> None:
        for _ in range(5):
            pull(shim, name)
            pull(shim, other)

    def removes() -> None:
        for _ in range(10):
            for ref in (name, other):
                try:
                    shim.remove(ref)
                except grpc.RpcError as exc:  # pragma: no cover - reported below
                    raise AssertionError(f"remove failed: {exc.code()} {exc.details()}") from exc

    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(pulls), pool.submit(removes)]
        for future in futures:
            future.result(timeout=120)
    check_store(store)
    pull(shim, name)
    pull(shim, other)
    assert len(shim.list()) == 2
    check_store(store)
