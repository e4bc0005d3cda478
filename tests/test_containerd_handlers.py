"""The containerd backend per runtime handler, with artifacts, and its ImageFsInfo.

containerd 1.6's CRI keeps one image per name, resolved for the host
platform: it has no runtime-handler-aware image store (containerd#9377).
crishim's design: a containerd backend serves one namespace for one
platform; handlers of that platform share it, a handler of another platform
is a backend of its own on a namespace of its own. These tests run on the
session containerd, each in namespaces of its own, against the test
registry (``test/multi:1`` is an index over amd64, arm64/v8 and arm/v7).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import rpc_error
from containerd.images import host_platform
from containerd.process import ContainerdProcess
from crishim_plugins.containerd import ContainerdBackend, ContainerdOptions
from crishim_plugins.containerd.api.services.content.v1 import content_pb2, content_pb2_grpc
from crishim_plugins.containerd.api.services.images.v1 import images_pb2, images_pb2_grpc
from registry.helpers import plain_endpoint
from registry.images import RegistryImages
from registry.process import RegistryProcess
from test_runtime_handlers import listed, pull, remove, status

from crishim.cri.runtime.v1 import api_pb2, api_pb2_grpc
from crishim.errors import BackendError
from crishim.model import Platform
from crishim.testing.ocibuild import BuiltImage
from crishim.testing.server import RunningShim, running_server
from crishim.types import BackendContext

pytest_plugins = ["registry.fixtures", "containerd.fixtures"]

_namespaces = itertools.count(1)


def namespace(what: str) -> str:
    return f"crishim-{what}-{next(_namespaces)}"


class Containerd:
    """What a test reads of the session containerd, per namespace."""

    def __init__(self, process: ContainerdProcess) -> None:
        channel = process.channel()
        self.process = process
        self.records = images_pb2_grpc.ImagesStub(channel)
        self.content = content_pb2_grpc.ContentStub(channel)
        self.cri = api_pb2_grpc.ImageServiceStub(channel)

    def names(self, ns: str) -> set[str]:
        response = self.records.List(
            images_pb2.ListImagesRequest(), metadata=(("containerd-namespace", ns),), timeout=30
        )
        return {image.name for image in response.images}

    def blobs(self, ns: str) -> set[str]:
        found: set[str] = set()
        for response in self.content.List(
            content_pb2.ListContentRequest(), metadata=(("containerd-namespace", ns),), timeout=30
        ):
            found.update(info.digest for info in response.info)
        return found

    def labels(self, ns: str, digest: str) -> dict[str, str]:
        request = content_pb2.InfoRequest(digest=digest)
        info = self.content.Info(request, metadata=(("containerd-namespace", ns),), timeout=30)
        return dict(info.info.labels)


@pytest.fixture
def ctrd(containerd: ContainerdProcess) -> Containerd:
    return Containerd(containerd)


def backend(
    containerd: ContainerdProcess,
    registry: RegistryProcess,
    name: str,
    ns: str,
    **options: Any,
) -> dict[str, Any]:
    return {
        "name": name,
        "type": "containerd",
        "options": {
            "address": f"unix://{containerd.address}",
            "namespace": ns,
            "trust_env": False,
            "registries": {registry.host: {"endpoints": [plain_endpoint(registry.url)]}},
            **options,
        },
    }


def platforms(
    images: RegistryImages,
) -> tuple[dict[str, str], BuiltImage, dict[str, str], BuiltImage]:
    """(host platform, its multi image, another platform, its multi image)."""
    architecture, _variant = host_platform()
    amd64 = ({"os": "linux", "architecture": "amd64"}, images.multi_amd64)
    arm64 = ({"os": "linux", "architecture": "arm64", "variant": "v8"}, images.multi_arm64)
    if architecture == "amd64":
        return (*amd64, *arm64)
    if architecture == "arm64":
        return (*arm64, *amd64)
    pytest.skip(f"the test registry's multi image has no {architecture} manifest")


@pytest.fixture
def two_platforms(
    containerd: ContainerdProcess, registry: RegistryProcess, images: RegistryImages
) -> Iterator[tuple[RunningShim, str, str]]:
    host_ns, vm_ns = namespace("host"), namespace("vm")
    host, _, other, _ = platforms(images)
    backends = [
        backend(containerd, registry, "host", host_ns)
        | {"runtime_handlers": ["", "runc-fast"], "platform": host},
        backend(containerd, registry, "vm", vm_ns, unpack=False)
        | {"runtime_handlers": ["kata-vm"], "platform": other},
    ]
    with running_server({"backends": backends}) as shim:
        yield shim, host_ns, vm_ns
        for image in shim.list():
            remove(shim, image.id, image.spec.runtime_handler)


def test_a_handler_of_another_platform_pulls_into_its_namespace(
    two_platforms: tuple[RunningShim, str, str],
    registry: RegistryProcess,
    images: RegistryImages,
    ctrd: Containerd,
) -> None:
    shim, host_ns, vm_ns = two_platforms
    _, host_image, _, vm_image = platforms(images)
    ref = f"{registry.host}/test/multi:1"
    index = f"{registry.host}/test/multi@{images.multi.descriptor.digest}"
    assert pull(shim, ref) == host_image.id
    assert pull(shim, ref, "kata-vm") == vm_image.id
    assert pull(shim, ref, "runc-fast") == host_image.id
    # each namespace names its platform's image, as containerd's CRI names a pull
    assert ctrd.names(host_ns) == {ref, index, host_image.id}
    assert ctrd.names(vm_ns) == {ref, index, vm_image.id}
    assert vm_image.config.digest in ctrd.blobs(vm_ns) - ctrd.blobs(host_ns)
    assert status(shim, ref, "runc-fast").image.id == host_image.id
    assert status(shim, ref, "kata-vm").image.spec.runtime_handler == "kata-vm"
    assert listed(shim) == sorted([(host_image.id, ""), (vm_image.id, "kata-vm")])
    # removal for one handler leaves the other platform's image
    remove(shim, ref, "kata-vm")
    assert ctrd.names(vm_ns) == set()
    assert ctrd.names(host_ns) == {ref, index, host_image.id}
    assert listed(shim) == [(host_image.id, "")]


def test_one_namespace_is_one_platforms(
    containerd: ContainerdProcess,
    registry: RegistryProcess,
    images: RegistryImages,
    tmp_path: Path,
) -> None:
    ns = namespace("shared")
    host, _, other, _ = platforms(images)

    def make(name: str, plat: dict[str, str]) -> ContainerdBackend:
        options = backend(containerd, registry, name, ns)["options"]
        context = BackendContext(
            name=name,
            platform=Platform(plat["os"], plat["architecture"], plat.get("variant", "")),
            config_dir=tmp_path,
        )
        return ContainerdBackend(context, ContainerdOptions.model_validate(options))

    first = make("host", host)
    first.start()
    try:
        second = make("vm", other)
        with pytest.raises(BackendError) as info:
            second.start()
        message = str(info.value)
        assert f"containerd namespace {ns}" in message
        assert "served by backend host" in message
        assert "give this backend a namespace of its own" in message
        # the same platform may share it (one more handler)
        same = make("also-host", host)
        same.start()
        same.close()
    finally:
        first.close()
    # once the first is gone, the namespace is free for one platform
    second = make("vm", other)
    second.start()
    second.close()


# --------------------------------------------------------------------------- artifacts


@pytest.fixture
def artifacts_node(
    containerd: ContainerdProcess, registry: RegistryProcess
) -> Iterator[tuple[RunningShim, str]]:
    ns = namespace("artifacts")
    with running_server({"backends": [backend(containerd, registry, "node", ns)]}) as shim:
        yield shim, ns
        for image in shim.list():
            shim.remove(image.id)


def test_an_artifact_is_stored_in_containerd(
    artifacts_node: tuple[RunningShim, str],
    registry: RegistryProcess,
    images: RegistryImages,
    ctrd: Containerd,
) -> None:
    shim, ns = artifacts_node
    artifact = images.oras
    ref = f"{registry.host}/test/oras:1"
    digest_name = f"{registry.host}/test/oras@{artifact.manifest.digest}"
    assert pull(shim, ref) == artifact.id
    # its ID record is its manifest digest, not the empty config's
    assert ctrd.names(ns) == {ref, digest_name, artifact.id}
    blobs = {artifact.manifest.digest, artifact.config.digest, *(d.digest for d in artifact.layers)}
    assert blobs <= ctrd.blobs(ns)
    labels = ctrd.labels(ns, artifact.manifest.digest)
    assert labels["containerd.io/gc.ref.content.config"] == artifact.config.digest
    assert labels["containerd.io/gc.ref.content.l.0"] == artifact.layers[0].digest
    # never unpacked: its layers are files, not a filesystem
    assert not [k for k in ctrd.labels(ns, artifact.config.digest) if "gc.ref.snapshot" in k]
    image = shim.status(ref).image
    assert (image.id, image.size, image.HasField("uid")) == (artifact.id, artifact.size, False)
    shim.remove(ref)
    assert ctrd.names(ns) == set()
    assert not blobs & ctrd.blobs(ns)


def test_a_containerd_backend_that_refuses_artifacts(
    containerd: ContainerdProcess,
    registry: RegistryProcess,
    images: RegistryImages,
    ctrd: Containerd,
) -> None:
    ns = namespace("no-artifacts")
    config = {"backends": [backend(containerd, registry, "node", ns, artifacts=False)]}
    with running_server(config) as shim:
        err = rpc_error(pull, shim, f"{registry.host}/test/oras:1")
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "OCI artifact" in (err.details() or "")
        assert ctrd.names(ns) == set()
        assert not {d.digest for d in images.oras.layers} & ctrd.blobs(ns)


# --------------------------------------------------------------------------- ImageFsInfo


def test_image_fs_info_is_containerds_own(
    artifacts_node: tuple[RunningShim, str], ctrd: Containerd
) -> None:
    shim, _ = artifacts_node
    ours = shim.images.ImageFsInfo(api_pb2.ImageFsInfoRequest(), timeout=30)
    theirs = ctrd.cri.ImageFsInfo(api_pb2.ImageFsInfoRequest(), timeout=30)

    def mounts(usages: Any) -> list[str]:
        return [u.fs_id.mountpoint for u in usages]

    assert mounts(ours.image_filesystems) == mounts(theirs.image_filesystems) != []
    # containerd 1.6 reports no container filesystems; crishim passes on what it says
    assert mounts(ours.container_filesystems) == mounts(theirs.container_filesystems)
    if ctrd.process.version().version.startswith("1.6"):
        assert list(theirs.container_filesystems) == []
