"""PullImage through the registry-cache backend against a real registry.

Every test talks to a real crishim server over its unix socket; the
registry is Debian's docker-registry (CNCF distribution) started by the
session fixture on 127.0.0.1, holding images built by LayoutBuilder.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from registry.helpers import (
    blob_exists,
    cache_config,
    check_store,
    plain_config,
    plain_endpoint,
    pull,
    pull_error,
)
from registry.images import RegistryImages
from registry.process import RegistryProcess, free_port

from crishim.cri.runtime.v1 import api_pb2
from crishim.testing.ocibuild import LayoutBuilder
from crishim.testing.server import RunningShim

pytest_plugins = ["registry.fixtures"]

Server = Callable[..., RunningShim]


# --------------------------------------------------------------------------- names


def test_pull_by_tag(
    shim: RunningShim, registry: RegistryProcess, images: RegistryImages, store: Path
) -> None:
    name = f"{registry.host}/test/small"
    response = pull(shim, f"{name}:1")
    assert response.image_ref == images.small.id
    image = shim.status(f"{name}:1").image
    assert image.id == response.image_ref
    assert list(image.repo_tags) == [f"{name}:1"]
    assert list(image.repo_digests) == [f"{name}@{images.small.manifest.digest}"]
    assert image.size == images.small.size
    assert image.uid.value == 1000
    assert check_store(store) == {
        f"{name}:1": images.small.manifest.digest,
        f"{name}@{images.small.manifest.digest}": images.small.manifest.digest,
    }
    for digest in images.blob_digests(images.small):
        assert blob_exists(store, digest)


def test_pull_without_tag_is_latest(
    shim: RunningShim, registry: RegistryProcess, images: RegistryImages
) -> None:
    name = f"{registry.host}/test/small"
    assert pull(shim, name).image_ref == images.small.id
    assert list(shim.status(name).image.repo_tags) == [f"{name}:latest"]
    assert shim.status(f"{name}:latest").image.id == images.small.id


def test_pull_by_digest_has_no_tags(
    shim: RunningShim, registry: RegistryProcess, images: RegistryImages, store: Path
) -> None:
    name = f"{registry.host}/test/small"
    ref = f"{name}@{images.small.manifest.digest}"
    assert pull(shim, ref).image_ref == images.small.id
    image = shim.status(ref).image
    assert list(image.repo_tags) == []
    assert list(image.repo_digests) == [ref]
    assert shim.status(f"{name}:1").image.id == ""
    assert list(check_store(store)) == [ref]


def test_pull_multi_platform_index_takes_the_configured_platform(
    shim: RunningShim, registry: RegistryProcess, images: RegistryImages, store: Path
) -> None:
    name = f"{registry.host}/test/multi"
    assert pull(shim, f"{name}:1").image_ref == images.multi_arm64.id
    image = shim.status(f"{name}:1").image
    assert list(image.repo_digests) == [f"{name}@{images.multi.descriptor.digest}"]
    assert image.size == images.multi_arm64.size
    for digest in images.blob_digests(images.multi_arm64):
        assert blob_exists(store, digest)
    for other in (images.multi_amd64, images.multi_arm):
        for digest in images.blob_digests(other):
            assert not blob_exists(store, digest), "blobs of other platforms are not fetched"
    check_store(store)
    # the index digest names the arm64 image, as containerd does
    by_digest = shim.status(f"{name}@{images.multi.descriptor.digest}").image
    assert by_digest.id == images.multi_arm64.id


def test_pull_docker_media_types(
    shim: RunningShim, registry: RegistryProcess, images: RegistryImages
) -> None:
    ref = f"{registry.host}/test/docker:1"
    assert pull(shim, ref).image_ref == images.docker.id
    verbose = shim.status(ref, verbose=True)
    info = json.loads(verbose.info["info"])
    assert info["manifestMediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert info["backend"] == "cache"


def test_pull_twice_is_one_image_and_reuses_blobs(
    shim: RunningShim, registry: RegistryProcess, images: RegistryImages, store: Path
) -> None:
    name = f"{registry.host}/test/small"
    pull(shim, f"{name}:1")
    layer = store / "blobs" / "sha256" / images.small.layers[0].hex
    before = layer.stat().st_ino
    pull(shim, f"{name}:1")
    pull(shim, f"{name}:also")
    assert layer.stat().st_ino == before, "a stored blob is not fetched again"
    (image,) = shim.list()
    assert sorted(image.repo_tags) == [f"{name}:1", f"{name}:also"]
    assert list(image.repo_digests) == [f"{name}@{images.small.manifest.digest}"]


def test_image_is_served_like_any_other(
    shim: RunningShim, registry: RegistryProcess, images: RegistryImages
) -> None:
    name = f"{registry.host}/test/shared-a:1"
    pull(shim, name)
    pull(shim, f"{registry.host}/test/docker:1")
    listed = {image.id for image in shim.list()}
    assert listed == {images.shared_a.id, images.docker.id}
    streamed = {
        image.id
        for batch in shim.images.StreamImages(api_pb2.StreamImagesRequest(), timeout=10)
        for image in batch.images
    }
    assert streamed == listed
    assert shim.status(images.shared_a.id).image.repo_tags == [name]
    assert shim.status(images.shared_a.id[7:19]).image.id == images.shared_a.id


# --------------------------------------------------------------------------- mirrors


def test_mirror_serves_another_registry_name(
    crishim_server: Server, store: Path, registry: RegistryProcess, images: RegistryImages
) -> None:
    config = cache_config(store, {"gcr.io": {"endpoints": [plain_endpoint(registry.url)]}})
    shim = crishim_server(config)
    assert pull(shim, "gcr.io/test/small:1").image_ref == images.small.id
    image = shim.status("gcr.io/test/small:1").image
    assert list(image.repo_tags) == ["gcr.io/test/small:1"]
    assert list(image.repo_digests) == [f"gcr.io/test/small@{images.small.manifest.digest}"]
    # the registry is configured by name only: nothing else is reachable
    err = pull_error(shim, f"{registry.host}/test/small:1", timeout=30)
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert registry.host in err.details()


def test_same_image_from_two_registries_is_one_image(
    crishim_server: Server, store: Path, registry: RegistryProcess, images: RegistryImages
) -> None:
    mirror = {"endpoints": [plain_endpoint(registry.url)]}
    shim = crishim_server(cache_config(store, {"gcr.io": mirror, registry.host: mirror}))
    a = pull(shim, f"{registry.host}/test/small:1").image_ref
    b = pull(shim, "gcr.io/test/small:also").image_ref
    assert a == b == images.small.id
    (image,) = shim.list()
    assert sorted(image.repo_tags) == sorted(
        [f"{registry.host}/test/small:1", "gcr.io/test/small:also"]
    )
    assert sorted(image.repo_digests) == sorted(
        f"{n}@{images.small.manifest.digest}"
        for n in (f"{registry.host}/test/small", "gcr.io/test/small")
    )


def test_mirrors_are_tried_in_order(
    crishim_server: Server, store: Path, registry: RegistryProcess, images: RegistryImages
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    endpoints = [plain_endpoint(dead), plain_endpoint(registry.url)]
    shim = crishim_server(cache_config(store, {"mirror.test": {"endpoints": endpoints}}))
    assert pull(shim, "mirror.test/test/small:1").image_ref == images.small.id


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("path", "why"),
    [("test/small:nope", "manifest"), ("test/nothing:1", "not found")],
    ids=["unknown-tag", "unknown-repository"],
)
def test_unknown_image_is_not_found(
    shim: RunningShim, registry: RegistryProcess, store: Path, path: str, why: str
) -> None:
    ref = f"{registry.host}/{path}"
    err = pull_error(shim, ref)
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert ref in err.details()
    assert why in err.details()
    assert registry.host in err.details()
    assert shim.list() == []
    assert check_store(store) == {}


def test_unknown_platform_is_not_found(
    crishim_server: Server, store: Path, registry: RegistryProcess
) -> None:
    config = plain_config(store, registry)
    config["platform"] = {"os": "linux", "architecture": "s390x"}
    shim = crishim_server(config)
    err = pull_error(shim, f"{registry.host}/test/multi:1")
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert "linux/s390x" in err.details()


def test_not_a_container_image_is_failed_precondition(
    shim: RunningShim, registry: RegistryProcess, store: Path
) -> None:
    err = pull_error(shim, f"{registry.host}/test/artifact:1")
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not a container image" in err.details()
    assert check_store(store) == {}


def test_unreachable_registry_is_unavailable(
    crishim_server: Server, store: Path, registry: RegistryProcess
) -> None:
    dead = f"127.0.0.1:{free_port()}"
    shim = crishim_server(
        cache_config(store, {dead: {"endpoints": [plain_endpoint(f"http://{dead}")]}})
    )
    err = pull_error(shim, f"{dead}/test/small:1")
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert f"{dead}/test/small:1" in err.details()
    assert "cannot connect" in err.details()


@pytest.mark.parametrize(
    ("ref", "code"),
    [
        ("", grpc.StatusCode.INVALID_ARGUMENT),
        ("Not A Reference", grpc.StatusCode.INVALID_ARGUMENT),
        ("sha256:" + "0" * 64, grpc.StatusCode.NOT_FOUND),
    ],
    ids=["empty", "malformed", "absent-id"],
)
def test_bad_pull_requests(shim: RunningShim, ref: str, code: grpc.StatusCode) -> None:
    err = pull_error(shim, ref)
    assert err.code() == code
    assert err.details()


def test_pull_by_id_of_a_stored_image_answers_it(
    shim: RunningShim, registry: RegistryProcess, images: RegistryImages
) -> None:
    pull(shim, f"{registry.host}/test/small:1")
    assert pull(shim, images.small.id).image_ref == images.small.id


def test_moved_tag_keeps_the_old_image_by_digest(
    crishim_server: Server,
    store: Path,
    registry: RegistryProcess,
    images: RegistryImages,
) -> None:
    """A tag that moves names the new image; the old one keeps its digest name."""
    from registry.push import Pusher

    shim = crishim_server(plain_config(store, registry))
    name = f"{registry.host}/test/moving"
    assert pull(shim, f"{name}:1").image_ref == images.small.id
    pusher = Pusher(registry.url, images.layout)
    try:
        pusher.image("test/moving", images.docker, ["1"])
        assert pull(shim, f"{name}:1").image_ref == images.docker.id
    finally:
        pusher.image("test/moving", images.small, ["1"])
        pusher.client.close()
    old = shim.status(images.small.id).image
    assert list(old.repo_tags) == []
    assert list(old.repo_digests) == [f"{name}@{images.small.manifest.digest}"]
    assert list(shim.status(f"{name}:1").image.repo_tags) == [f"{name}:1"]
    check_store(store)


def test_pull_of_an_image_another_backend_serves_is_still_a_pull(
    crishim_server: Server,
    store: Path,
    tmp_path: Path,
    registry: RegistryProcess,
    images: RegistryImages,
) -> None:
    """kubelet asked for a pull: the registry-cache pulls, and the names merge by ID."""
    from registry.images import build_images

    local = build_images(tmp_path / "local")  # deterministic: the same image IDs
    builder = LayoutBuilder(local.layout)
    builder.tag(local.small, "example.com/local/small:1")
    builder.write()
    oci_dir = {"name": "local", "type": "oci-dir", "options": {"path": str(local.layout)}}
    config = plain_config(store, registry)
    config["backends"].insert(0, oci_dir)
    shim = crishim_server(config)
    name = f"{registry.host}/test/small:1"
    assert pull(shim, name).image_ref == images.small.id
    assert list(check_store(store)) == [
        name,
        f"{registry.host}/test/small@{images.small.manifest.digest}",
    ]
    image = shim.status(images.small.id).image
    assert sorted(image.repo_tags) == sorted(["example.com/local/small:1", name])


def test_a_damaged_blob_is_fetched_again(
    shim: RunningShim, registry: RegistryProcess, images: RegistryImages, store: Path
) -> None:
    name = f"{registry.host}/test/small:1"
    pull(shim, name)
    layer = store / "blobs" / "sha256" / images.small.layers[1].hex
    layer.chmod(0o644)
    layer.write_bytes(layer.read_bytes()[:10])
    assert pull(shim, name).image_ref == images.small.id
    check_store(store)


def test_a_corrupt_index_json_is_a_clear_error_not_a_crash(
    crishim_server: Server, shim: RunningShim, registry: RegistryProcess, store: Path
) -> None:
    name = f"{registry.host}/test/small:1"
    pull(shim, name)
    (store / "index.json").write_text("{ not json")
    err = pull_error(shim, f"{registry.host}/test/docker:1")
    assert err.code() == grpc.StatusCode.INTERNAL
    assert "index.json" in err.details() and "cache" in err.details()
    assert shim.status(name).image.id, "what was served before is still served"
    with pytest.raises(Exception, match=r"index\.json"):
        crishim_server(plain_config(store, registry))
