"""The ``containerd`` backend against a real containerd and a real registry.

A containerd of this module's own starts with no images at all (its
sandbox image lives in the test registry), so everything a pod runs here
was pulled by crishim: the pause image, the container's image. Pods run
through containerd's own RuntimeService (host network, no CNI), exactly as
kubelet drives them when crishim is its image service.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from containerd.cri import CriClient
from containerd.images import (
    ContainerdImages,
    build_images,
    busybox_binary,
    busybox_files,
    host_platform,
    push_images,
)
from containerd.process import CRI_METADATA, Binaries, ContainerdProcess
from crishim_plugins.containerd.api.services.content.v1 import content_pb2, content_pb2_grpc
from crishim_plugins.containerd.api.services.images.v1 import images_pb2, images_pb2_grpc
from crishim_plugins.containerd.api.services.leases.v1 import leases_pb2, leases_pb2_grpc
from crishim_plugins.containerd.api.services.snapshots.v1 import snapshots_pb2, snapshots_pb2_grpc
from crishim_plugins.containerd.api.types import descriptor_pb2
from policy_helpers import PLUGINS, Recording
from registry.process import RegistryProcess
from registry.proxy import TamperingProxy
from registry.push import Pusher

from crishim.cri.runtime.v1 import api_pb2, api_pb2_grpc
from crishim.testing.ocibuild import LayoutBuilder
from crishim.testing.server import RunningShim, running_server

pytest_plugins = ["registry.fixtures", "containerd.fixtures"]

NAMESPACE = "k8s.io"
SNAPSHOTTER = "overlayfs"
WAIT = 10.0


def wait_for(what: str, check: Callable[[], bool], timeout: float = WAIT) -> float:
    """Poll ``check`` until it is true; the seconds it took (fails after ``timeout``)."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.02)
    return time.monotonic() - started


# -- what the module works with -------------------------------------------------------


class Node:
    """A containerd with its stubs, the registry's images, and configs for crishim."""

    def __init__(
        self, containerd: ContainerdProcess, registry: RegistryProcess, images: dict[str, Any]
    ) -> None:
        self.containerd = containerd
        self.registry = registry
        self.images = images
        channel = containerd.channel()
        self.cri = api_pb2_grpc.ImageServiceStub(channel)
        self.content = content_pb2_grpc.ContentStub(channel)
        self.image_records = images_pb2_grpc.ImagesStub(channel)
        self.leases = leases_pb2_grpc.LeasesStub(channel)
        self.snapshots = snapshots_pb2_grpc.SnapshotsStub(channel)

    def ref(self, repository: str, tag: str = "1") -> str:
        return f"{self.registry.host}/{repository}:{tag}"

    def backend(self, registry_url: str | None = None, **options: Any) -> dict[str, Any]:
        url = registry_url or self.registry.url
        return {
            "name": "node",
            "type": "containerd",
            "options": {
                "address": f"unix://{self.containerd.address}",
                "namespace": NAMESPACE,
                "trust_env": False,
                "registries": {
                    self.registry.host: {"endpoints": [{"url": url, "plain_http": True}]}
                },
                **options,
            },
        }

    def config(self, **options: Any) -> dict[str, Any]:
        return {"backends": [self.backend(**options)]}

    # containerd's side of things
    def names(self) -> set[str]:
        response = self.image_records.List(
            images_pb2.ListImagesRequest(), metadata=CRI_METADATA, timeout=30
        )
        return {image.name for image in response.images}

    def blobs(self) -> set[str]:
        found: set[str] = set()
        for response in self.content.List(
            content_pb2.ListContentRequest(), metadata=CRI_METADATA, timeout=30
        ):
            found.update(info.digest for info in response.info)
        return found

    def snapshot(self, name: str) -> bool:
        try:
            self.snapshots.Stat(
                snapshots_pb2.StatSnapshotRequest(snapshotter=SNAPSHOTTER, key=name),
                metadata=CRI_METADATA,
                timeout=30,
            )
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return False
            raise
        return True

    def info(self, digest: str) -> content_pb2.Info:
        request = content_pb2.InfoRequest(digest=digest)
        return self.content.Info(request, metadata=CRI_METADATA, timeout=30).info

    def lease_ids(self) -> set[str]:
        response = self.leases.List(leases_pb2.ListRequest(), metadata=CRI_METADATA, timeout=30)
        return {lease.id for lease in response.leases}

    def cri_status(self, ref: str) -> api_pb2.Image | None:
        response = self.cri.ImageStatus(
            api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=ref)), timeout=30
        )
        return response.image if response.HasField("image") else None


def pull(shim: RunningShim, ref: str, timeout: float = 60) -> str:
    request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref))
    response = shim.images.PullImage(request, timeout=timeout)
    return str(response.image_ref)


def _push_extra(registry: RegistryProcess, root: Path, busybox: ContainerdImages) -> dict[str, Any]:
    """Images with layers of their own (removal, concurrency, crash tests)."""
    b = LayoutBuilder(root)
    out: dict[str, Any] = {}
    pusher = Pusher(registry.url, root)
    try:
        for name, payload in (
            ("removable", b"removable " * 1000),
            ("direct", b"pulled by containerd itself " * 100),
            ("after-restart", b"pulled after a restart " * 100),
            ("kit-a", b"kit a " * 10),
        ):
            image = b.image(name=name, layers=[{f"data/{name}": payload}], user="1000")
            out[name] = image
        noise = os.urandom(2 * 1024 * 1024)
        out["big"] = b.image(name="big", layers=[{"big/a": noise}, {"big/b": noise[::-1]}])
        architecture, variant = host_platform()
        for name in ("lazy", "tampered"):
            out[name] = b.image(
                name=name,
                layers=[busybox_files(busybox_binary()), {f"data/{name}": f"{name}\n" * 50}],
                architecture=architecture,
                variant=variant,
            )
        b.write()
        for name, image in out.items():
            pusher.image(f"crishim/{name}", image, ["1"])
    finally:
        pusher.client.close()
    return out


@pytest.fixture(scope="module")
def node(
    containerd_bin: Binaries,
    registry: RegistryProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Node]:
    """An empty containerd whose sandbox image is in the test registry."""
    built = build_images(tmp_path_factory.mktemp("node-images"))
    push_images(built, registry.url)
    extra = _push_extra(registry, tmp_path_factory.mktemp("node-extra"), built)
    process = ContainerdProcess(
        binaries=containerd_bin,
        sandbox_image=f"{registry.host}/crishim/pause:1",
        plain_http_registries=[registry.host],
    )
    process.start()
    try:
        yield Node(process, registry, {"busybox": built.busybox, "pause": built.pause, **extra})
    finally:
        process.close()


@pytest.fixture
def shim(node: Node) -> Iterator[RunningShim]:
    with running_server(node.config()) as running:
        yield running


# -- a pod runs what crishim pulled ------------------------------------------------------


def test_pulled_images_run_in_containerd(node: Node, shim: RunningShim, tmp_path: Path) -> None:
    pause_ref = node.ref("crishim/pause")
    busybox_ref = node.ref("crishim/busybox")
    assert pull(shim, pause_ref) == node.images["pause"].id
    image_id = pull(shim, busybox_ref)
    assert image_id == node.images["busybox"].id
    # kubelet creates the container with the image reference PullImage returned
    with CriClient(node.containerd.channel(), tmp_path / "pods") as cri:
        pod = cri.run_pod("crishim-pulled")
        container = cri.run_container(
            pod, "hello", image_id, command=["/bin/echo", "hello from an image crishim pulled"]
        )
        status = cri.wait_exited(container)
        assert status.exit_code == 0
        assert cri.log_lines(pod, container) == ["hello from an image crishim pulled"]
        # containerd 1.6 reports the repo digest as image_ref (newer ones add image_id)
        crishim_image = shim.status(busybox_ref).image
        assert status.image_ref in (image_id, *crishim_image.repo_digests)
        if status.image_id:
            assert status.image_id == image_id


def test_crishim_and_containerds_cri_agree(node: Node, shim: RunningShim) -> None:
    for name in ("pause", "busybox"):
        pull(shim, node.ref(f"crishim/{name}"))
    ours = {image.id: image for image in shim.list()}
    theirs = {
        image.id: image
        for image in node.cri.ListImages(api_pb2.ListImagesRequest(), timeout=30).images
    }
    assert set(ours) == set(theirs)
    for image_id, image in ours.items():
        other = theirs[image_id]
        assert sorted(image.repo_tags) == sorted(other.repo_tags)
        assert sorted(image.repo_digests) == sorted(other.repo_digests)
        assert image.size == other.size
        for ref in (image_id, *image.repo_tags, *image.repo_digests):
            status = shim.status(ref).image
            assert (status.id, sorted(status.repo_tags)) == (image_id, sorted(image.repo_tags))
            assert node.cri_status(ref) is not None


def test_names_are_those_containerds_cri_gives(node: Node, shim: RunningShim) -> None:
    ref = node.ref("crishim/busybox")
    image_id = pull(shim, ref)
    manifest = node.images["busybox"].manifest.digest
    repository = ref.rsplit(":", 1)[0]
    assert {ref, f"{repository}@{manifest}", image_id} <= node.names()
    records = node.image_records.List(
        images_pb2.ListImagesRequest(filters=[f'name=="{ref}"']), metadata=CRI_METADATA, timeout=30
    ).images
    assert [r.labels["io.cri-containerd.image"] for r in records] == ["managed"]
    # the manifest keeps its config and layers from the garbage collector
    info = node.content.Info(
        content_pb2.InfoRequest(digest=manifest), metadata=CRI_METADATA, timeout=30
    ).info
    assert info.labels["containerd.io/gc.ref.content.config"] == image_id
    layers = [d.digest for d in node.images["busybox"].layers]
    assert [
        info.labels[f"containerd.io/gc.ref.content.l.{i}"] for i in range(len(layers))
    ] == layers
    # and no lease of crishim's outlives the pull
    assert not {lease for lease in node.lease_ids() if lease.startswith("crishim-")}


def test_a_pull_unpacks_the_layers_for_containerd(node: Node, shim: RunningShim) -> None:
    ref = node.ref("crishim/busybox")
    image = node.images["busybox"]
    pull(shim, ref)
    top = image.chain_id
    assert node.snapshot(top)
    # the config keeps the snapshots from the garbage collector, as containerd's pull does
    assert (
        node.info(image.config.digest).labels[f"containerd.io/gc.ref.snapshot.{SNAPSHOTTER}"] == top
    )
    for layer, diff_id in zip(image.layers, image.diff_ids, strict=True):
        assert node.info(layer.digest).labels["containerd.io/uncompressed"] == diff_id


def test_without_unpack_containerd_unpacks_at_create(node: Node, tmp_path: Path) -> None:
    image = node.images["lazy"]
    with running_server(node.config(unpack=False)) as shim:
        image_id = pull(shim, node.ref("crishim/lazy"))
        assert not node.snapshot(image.chain_id)
        pull(shim, node.ref("crishim/pause"))
        with CriClient(node.containerd.channel(), tmp_path / "pods") as cri:
            pod = cri.run_pod("lazy")
            container = cri.run_container(pod, "lazy", image_id, command=["/bin/cat", "/data/lazy"])
            assert cri.wait_exited(container).exit_code == 0
            assert cri.log_lines(pod, container)[:2] == ["lazy", "lazy"]
        assert node.snapshot(image.chain_id)


def test_a_corrupted_layer_is_data_loss_and_nothing_is_kept(
    node: Node, registry: RegistryProcess
) -> None:
    image = node.images["tampered"]
    layer = image.layers[1].digest
    proxy = TamperingProxy(registry.port).start()
    try:
        proxy.tamper.add(layer)
        with running_server(node.config(registry_url=proxy.url)) as shim:
            ref = node.ref("crishim/tampered")
            with pytest.raises(grpc.RpcError) as info:
                pull(shim, ref)
            assert info.value.code() == grpc.StatusCode.DATA_LOSS
            assert layer in (info.value.details() or "")
            assert not shim.status(ref).HasField("image")
        assert not {n for n in node.names() if "tampered" in n}
        assert layer not in node.blobs()
        assert not {lease for lease in node.lease_ids() if lease.startswith("crishim-")}
    finally:
        proxy.stop()


def test_pull_policies_keep_denied_images_out_of_containerd(node: Node) -> None:
    config = node.config()
    config["pull_policies"] = [
        {
            "name": "by-namespace",
            "type": "registry-policy",
            "options": {"namespaces": {"locked": {"deny": ["**"]}}},
        },
        {"name": "signatures", "type": "test-image", "options": {"mode": "deny"}},
    ]
    ref = node.ref("crishim/removable")
    request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref))
    request.sandbox_config.metadata.namespace = "locked"
    before = node.blobs()
    try:
        with running_server(config, extra_plugins=PLUGINS) as shim:
            with pytest.raises(grpc.RpcError) as info:
                shim.images.PullImage(request, timeout=60)
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "in namespace locked" in (info.value.details() or "")
            assert not Recording.instances["signatures"].images  # denied before resolving
            request.sandbox_config.metadata.namespace = "default"
            with pytest.raises(grpc.RpcError) as info:
                shim.images.PullImage(request, timeout=60)
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "denied by pull policy signatures" in (info.value.details() or "")
            (image,) = Recording.instances["signatures"].images
            assert image.image_id == node.images["removable"].id
    finally:
        Recording.instances.clear()
    # neither pull named the image in containerd or stored a layer of it
    assert not {n for n in node.names() if "removable" in n}
    layers = {layer.digest for layer in node.images["removable"].layers}
    assert not layers & (node.blobs() - before)
    assert not {lease for lease in node.lease_ids() if lease.startswith("crishim-")}


def test_pins_are_containerds_pin_label_both_ways(node: Node) -> None:
    ref = node.ref("crishim/kit-a")
    image_id = node.images["kit-a"].id
    config = {**node.config(), "pinned": [f"{node.registry.host}/crishim/kit-*"]}
    with running_server(config) as shim:
        assert pull(shim, ref) == image_id
        assert shim.status(ref).image.pinned
        labelled = [
            image
            for image in node.image_records.List(
                images_pb2.ListImagesRequest(), metadata=CRI_METADATA, timeout=30
            ).images
            if image.target.digest == node.images["kit-a"].manifest.digest
        ]
        assert labelled
        assert {image.labels.get("io.cri-containerd.pinned") for image in labelled} == {"pinned"}
    # a server whose config pins nothing still reports what containerd's label pins
    with running_server(node.config()) as shim:
        assert shim.status(image_id).image.pinned
        pause_id = pull(shim, node.ref("crishim/pause"))
        assert not shim.status(pause_id).image.pinned
        shim.remove(image_id)


# -- the index follows containerd -----------------------------------------------------------


def test_an_image_pulled_by_containerd_appears_within_2s(node: Node, shim: RunningShim) -> None:
    ref = node.ref("crishim/direct")
    image_id = node.images["direct"].id
    assert not shim.status(ref).HasField("image")
    node.cri.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref)), timeout=60)
    took = wait_for("crishim sees the image", lambda: shim.status(ref).HasField("image"), 2.0)
    assert shim.status(image_id).image.id == image_id
    assert took <= 2.0
    # and a removal by containerd disappears as quickly
    node.cri.RemoveImage(api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=ref)), timeout=30)
    wait_for("crishim forgets the image", lambda: not shim.status(image_id).HasField("image"), 2.0)


def test_remove_through_crishim_reclaims_the_blobs(node: Node, shim: RunningShim) -> None:
    ref = node.ref("crishim/removable")
    image = node.images["removable"]
    image_id = pull(shim, ref)
    own = {image.manifest.digest, image.config.digest, *(d.digest for d in image.layers)}
    assert own <= node.blobs()
    assert node.snapshot(image.chain_id)
    shim.remove(ref)
    assert not shim.status(image_id).HasField("image")
    assert node.cri_status(image_id) is None
    assert not {n for n in node.names() if "removable" in n or n == image_id}
    # the last delete was synchronous: the garbage collector already ran
    assert not own & node.blobs()
    assert not node.snapshot(image.chain_id)
    shim.remove(ref)  # idempotent


def test_two_concurrent_pulls_of_one_image_fetch_it_once(
    node: Node, registry: RegistryProcess
) -> None:
    proxy = TamperingProxy(registry.port).start()
    try:
        proxy.rate = 4 * 1024 * 1024  # slow enough for the second pull to find the first's
        with running_server(node.config(registry_url=proxy.url)) as shim:
            ref = node.ref("crishim/big")
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                results = list(pool.map(lambda _: pull(shim, ref), range(2)))
            image = node.images["big"]
            assert results == [image.id, image.id]
            for layer in image.layers:
                assert proxy.blob_gets(layer.digest) == 1, layer.digest
            shim.remove(ref)
    finally:
        proxy.stop()


# -- crashes and restarts -------------------------------------------------------------------


def _write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def test_sigkill_mid_pull_leaves_no_image_and_the_lease_expires(
    node: Node, registry: RegistryProcess, tmp_path: Path
) -> None:
    proxy = TamperingProxy(registry.port).start()
    try:
        proxy.rate = 1024 * 1024
        config = node.config(registry_url=proxy.url, lease_ttl=2)
        config["state_dir"] = str(tmp_path / "state")
        path = _write_config(tmp_path / "crishim.yaml", config)
        ref = node.ref("crishim/big")
        leases_before = node.lease_ids()
        victim = subprocess.Popen(
            [sys.executable, "-m", "crishim.cli", "pull", "--config", str(path), "-q", ref],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert proxy.blob_started.wait(30), "the pull never started a blob"
            wait_for("a lease of the pull", lambda: bool(node.lease_ids() - leases_before))
            victim.send_signal(signal.SIGKILL)
        finally:
            victim.wait(10)
        assert victim.returncode == -signal.SIGKILL
        (lease,) = node.lease_ids() - leases_before
        assert lease.startswith("crishim-pull-")
        assert not {n for n in node.names() if "crishim/big" in n}
        layers = {d.digest for d in node.images["big"].layers}
        # past the lease's expiry, the next garbage collection takes what it held
        time.sleep(2.5)
        _collect_garbage(node)
        wait_for("the expired lease goes", lambda: lease not in node.lease_ids())
        assert not layers & node.blobs()
    finally:
        proxy.stop()


def test_a_pull_longer_than_half_its_lease_moves_to_a_fresh_one(
    node: Node, registry: RegistryProcess
) -> None:
    proxy = TamperingProxy(registry.port).start()
    try:
        # one blob at a time, 2 MiB each at 1 MiB/s: the lease (3 s) is renewed
        # when the second layer starts, past half its life
        proxy.rate = 1024 * 1024
        before = node.lease_ids()
        seen: set[str] = set()
        config = node.config(registry_url=proxy.url, lease_ttl=3, max_concurrent_downloads=1)
        with running_server(config) as shim:
            ref = node.ref("crishim/big")
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                pulled = pool.submit(pull, shim, ref)
                collected = False
                while not pulled.done():
                    seen |= {i for i in node.lease_ids() - before if i.startswith("crishim-")}
                    if not collected and len(seen) > 1:
                        time.sleep(1.2)  # the first lease is past its expiry: collect now
                        _collect_garbage(node)
                        collected = True
                    time.sleep(0.05)
                assert pulled.result() == node.images["big"].id
            assert collected, f"the lease was not renewed during the pull (saw {seen})"
            image = node.images["big"]
            assert {image.config.digest, *(d.digest for d in image.layers)} <= node.blobs()
            assert node.snapshot(image.chain_id)
            assert not (node.lease_ids() - before)
            shim.remove(ref)
    finally:
        proxy.stop()


def _collect_garbage(node: Node) -> None:
    """Make containerd collect now: a synchronous delete of a throwaway image record.

    In a namespace of its own: containerd's CRI plugin would name an image
    made in ``k8s.io`` again while the delete runs. (The collector is global.)
    """
    metadata = (("containerd-namespace", "crishim-gc-trigger"),)
    name = "crishim.invalid/gc-trigger:1"
    target = node.images["pause"].manifest
    node.image_records.Create(
        images_pb2.CreateImageRequest(
            image=images_pb2.Image(
                name=name,
                target=descriptor_pb2.Descriptor(
                    media_type=target.media_type, digest=target.digest, size=target.size
                ),
            )
        ),
        metadata=metadata,
        timeout=30,
    )
    node.image_records.Delete(
        images_pb2.DeleteImageRequest(name=name, sync=True), metadata=metadata, timeout=30
    )


def test_containerd_restarted_under_crishim(
    containerd_bin: Binaries, registry: RegistryProcess, tmp_path: Path, node: Node
) -> None:
    process = ContainerdProcess(
        binaries=containerd_bin,
        sandbox_image=node.containerd.sandbox_image,
        plain_http_registries=[registry.host],
    )
    process.start()
    try:
        own = Node(process, registry, node.images)
        with running_server(own.config(max_reconnect_delay=0.5)) as shim:
            before = pull(shim, own.ref("crishim/busybox"))
            process.stop()
            # while containerd is away, what crishim knows is still served
            assert shim.status(before).image.id == before
            process.start()
            own = Node(process, registry, node.images)
            ref = own.ref("crishim/after-restart")
            own.cri.PullImage(
                api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref)), timeout=60
            )
            wait_for(
                "crishim sees an image containerd pulled after its restart",
                lambda: shim.status(ref).HasField("image"),
            )
            assert pull(shim, own.ref("crishim/kit-a")) == node.images["kit-a"].id
    finally:
        process.close()


def test_crishim_started_before_containerd_serves_once_it_is_up(
    containerd_bin: Binaries, registry: RegistryProcess, node: Node
) -> None:
    process = ContainerdProcess(
        binaries=containerd_bin,
        sandbox_image=node.containerd.sandbox_image,
        plain_http_registries=[registry.host],
    )
    process.start()
    try:
        own = Node(process, registry, node.images)
        config = own.config(max_reconnect_delay=0.5)
        process.stop()
        with running_server(config) as shim:
            # the backend starts (and the server serves) with containerd away
            assert shim.list() == []
            process.start()
            own = Node(process, registry, node.images)
            ref = own.ref("crishim/direct")
            own.cri.PullImage(
                api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref)), timeout=60
            )
            wait_for("crishim serves containerd's image", lambda: bool(shim.list()))
            assert [image.id for image in shim.list()] == [node.images["direct"].id]
    finally:
        process.close()
