"""The containerd test harness works: a real containerd 1.6, our stubs, pods, cleanup.

These smoke tests prove what later containerd-backend tests stand on: the
harness starts containerd with everything in temporary directories, our
generated containerd stubs talk to it (Version, Images, Events), images
imported with ``ctr`` reach both containerd's image store and its CRI
plugin, a host-network pod runs the busybox image and its log can be read,
and closing the harness leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from containerd.cri import CriClient, parse_log
from containerd.images import ContainerdImages, import_images, push_images
from containerd.process import (
    CRI_METADATA,
    CRI_NAMESPACE,
    SHIM_SOCKET_DIR,
    Binaries,
    ContainerdProcess,
    mounts_under,
    shim_pids,
)
from crishim_plugins.containerd.api.events import image_pb2
from crishim_plugins.containerd.api.services.events.v1 import events_pb2, events_pb2_grpc
from crishim_plugins.containerd.api.services.images.v1 import images_pb2, images_pb2_grpc
from google.protobuf import any_pb2, empty_pb2
from registry.process import RegistryProcess

from crishim.cri.runtime.v1 import api_pb2, runtime_service_pb2
from crishim.testing.ocibuild import OCI_MANIFEST

pytest_plugins = ["containerd.fixtures", "registry.fixtures"]

rs = runtime_service_pb2


def _images(process: ContainerdProcess) -> dict[str, images_pb2.Image]:
    stub = images_pb2_grpc.ImagesStub(process.channel())
    response = stub.List(images_pb2.ListImagesRequest(), metadata=CRI_METADATA, timeout=30)
    return {image.name: image for image in response.images}


def _cri_images(cri: CriClient) -> dict[str, api_pb2.Image]:
    response = cri.images.ListImages(api_pb2.ListImagesRequest(), timeout=30)
    return {image.id: image for image in response.images}


def _wait_for(predicate: object, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout}s")


# --------------------------------------------------------------------------- the daemon


def test_containerd_answers_version_through_our_stubs(containerd: ContainerdProcess) -> None:
    version = containerd.version()
    assert version.version.startswith("1.6."), version
    assert version.revision
    # every socket in the short directory, every byte of state in the data directory
    assert len(containerd.address.encode()) < 107
    assert Path(containerd.address).is_socket()
    assert containerd.sock_dir is not None and containerd.data_dir is not None
    assert Path(containerd.address).parent == containerd.sock_dir
    config = containerd.config_path.read_text()
    assert "version = 2" in config
    assert "restrict_oom_score_adj = true" in config
    for path in (containerd.root, containerd.state, containerd.runc_root):
        assert containerd.data_dir in path.parents and f'"{path}"' in config
    assert containerd.snapshotter in ("overlayfs", "native")


def test_images_need_a_namespace(containerd: ContainerdProcess) -> None:
    stub = images_pb2_grpc.ImagesStub(containerd.channel())
    with pytest.raises(grpc.RpcError) as info:
        stub.List(images_pb2.ListImagesRequest(), timeout=30)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


# --------------------------------------------------------------------------- images


def test_imported_images_are_in_containerds_image_store(
    containerd: ContainerdProcess, containerd_images: ContainerdImages
) -> None:
    images = _images(containerd)
    for ref, built in (
        (containerd_images.busybox_ref, containerd_images.busybox),
        (containerd_images.pause_ref, containerd_images.pause),
    ):
        image = images[ref]
        assert image.target.media_type == OCI_MANIFEST
        assert image.target.digest == built.manifest.digest
        assert image.target.size == built.manifest.size
        assert image.created_at.seconds > 0
    # the CRI plugin names every image by its config digest too
    assert containerd_images.busybox.id in images
    only = images_pb2_grpc.ImagesStub(containerd.channel()).List(
        images_pb2.ListImagesRequest(filters=[f"name=={containerd_images.pause_ref}"]),
        metadata=CRI_METADATA,
        timeout=30,
    )
    assert [i.name for i in only.images] == [containerd_images.pause_ref]


def test_imported_images_are_in_the_cri_image_service(
    cri: CriClient, containerd_images: ContainerdImages
) -> None:
    images = _cri_images(cri)
    busybox = images[containerd_images.busybox.id]
    assert list(busybox.repo_tags) == [containerd_images.busybox_ref]
    # containerd 1.6's CRI plugin reports a repo digest only for an image it has a
    # "repo@digest" record of, which its own pulls make and `ctr import` does not
    assert list(busybox.repo_digests) == []
    assert busybox.size > len(Path("/bin/busybox").read_bytes()) // 4
    pause = images[containerd_images.pause.id]
    assert list(pause.repo_tags) == [containerd_images.pause_ref]


# --------------------------------------------------------------------------- pods


def test_host_network_pod_runs_busybox_and_its_log_is_read(
    cri: CriClient, containerd_images: ContainerdImages
) -> None:
    pod = cri.run_pod("echo")
    status = cri.pod_status(pod)
    assert status.state == rs.SANDBOX_READY
    assert status.linux.namespaces.options.network == api_pb2.NODE

    line = f"hello from crishim {uuid.uuid4().hex}"
    # "echo" is found on PATH as the /bin/echo symlink to the executable /bin/busybox
    cid = cri.run_container(pod, "hello", containerd_images.busybox_ref, command=["echo", line])
    exited = cri.wait_exited(cid)
    assert exited.exit_code == 0
    assert exited.reason == "Completed"
    assert exited.image_ref == containerd_images.busybox.id
    assert cri.log_lines(pod, cid) == [line]
    assert Path(exited.log_path).parent == pod.log_dir


def test_container_streams_and_exit_code(
    cri: CriClient, containerd_images: ContainerdImages
) -> None:
    pod = cri.run_pod("streams")
    cid = cri.run_container(
        pod,
        "sh",
        containerd_images.busybox_ref,
        command=[
            "/bin/sh",
            "-c",
            "echo out; echo err >&2; sleep 0.1; cat /proc/1/cmdline; echo; exit 3",
        ],
    )
    exited = cri.wait_exited(cid)
    assert exited.exit_code == 3
    assert exited.reason == "Error"
    assert cri.log_lines(pod, cid, "stderr") == ["err"]
    stdout = cri.log_lines(pod, cid, "stdout")
    assert stdout[0] == "out"
    # containers share the sandbox's pid namespace (POD): pid 1 is the pause image's sleep
    assert stdout[1].split("\0")[:2] == ["/bin/sleep", "2147483647"]
    cri.remove_pod(pod)
    assert cri.pods == []


def test_parse_log_keeps_partial_lines() -> None:
    text = (
        "2024-01-01T00:00:00.1Z stdout P part\n"
        "2024-01-01T00:00:00.2Z stdout F one\n"
        "2024-01-01T00:00:00.3Z stderr F with spaces inside\n"
        "2024-01-01T00:00:00.4Z stdout F \n"
    )
    lines = parse_log(text)
    assert [(x.stream, x.partial, x.text) for x in lines] == [
        ("stdout", True, "part"),
        ("stdout", False, "one"),
        ("stderr", False, "with spaces inside"),
        ("stdout", False, ""),
    ]


# --------------------------------------------------------------------------- events


@pytest.fixture
def subscription(containerd: ContainerdProcess) -> Iterator[queue.Queue[events_pb2.Envelope]]:
    """Envelopes of /images/create and the probe topic, collected by a thread."""
    stub = events_pb2_grpc.EventsStub(containerd.channel())
    probe_topic = f"/crishim-test/probe-{uuid.uuid4().hex[:8]}"
    stream = stub.Subscribe(
        events_pb2.SubscribeRequest(
            filters=[
                f'namespace=={CRI_NAMESPACE},topic=="/images/create"',
                f'topic=="{probe_topic}"',
            ]
        ),
        timeout=120,
    )
    received: queue.Queue[events_pb2.Envelope] = queue.Queue()

    def collect() -> None:
        try:
            for envelope in stream:
                received.put(envelope)
        except grpc.RpcError:
            pass

    thread = threading.Thread(target=collect, daemon=True)
    thread.start()
    # the stream is live once an event published now comes back through it
    payload = any_pb2.Any()
    payload.Pack(empty_pb2.Empty())
    publisher = events_pb2_grpc.EventsStub(containerd.channel())
    deadline = time.monotonic() + 10
    probed = False
    while not probed and time.monotonic() < deadline:
        publisher.Publish(
            events_pb2.PublishRequest(topic=probe_topic, event=payload),
            metadata=CRI_METADATA,
            timeout=10,
        )
        try:
            while True:
                envelope = received.get(timeout=0.5)
                if envelope.topic == probe_topic:
                    probed = True
                    break
        except queue.Empty:
            continue
    assert probed, "the subscription never delivered the probe event"
    try:
        yield received
    finally:
        stream.cancel()
        thread.join(10)


def test_subscribe_receives_image_create_when_ctr_tags(
    containerd: ContainerdProcess,
    containerd_images: ContainerdImages,
    subscription: queue.Queue[events_pb2.Envelope],
) -> None:
    tag = f"crishim.test/busybox:tag-{uuid.uuid4().hex[:8]}"
    containerd.ctr("images", "tag", containerd_images.busybox_ref, tag)
    try:
        deadline = time.monotonic() + 10
        created: list[tuple[events_pb2.Envelope, image_pb2.ImageCreate]] = []
        while not created and time.monotonic() < deadline:
            envelope = subscription.get(timeout=max(0.1, deadline - time.monotonic()))
            assert envelope.topic == "/images/create", envelope.topic
            assert envelope.namespace == CRI_NAMESPACE
            # containerd 1.6 declares the image events in containerd.services.images.v1,
            # and its type URLs have no "type.googleapis.com/" prefix, so protobuf's
            # Any.Is/Unpack (which want a "/") refuse them: decode the value directly
            assert envelope.event.type_url == "containerd.services.images.v1.ImageCreate"
            assert not envelope.event.Is(image_pb2.ImageCreate.DESCRIPTOR)
            event = image_pb2.ImageCreate.FromString(envelope.event.value)
            if event.name == tag:
                created.append((envelope, event))
        assert created, f"no /images/create event for {tag}"
        envelope, _ = created[0]
        assert abs(envelope.timestamp.ToSeconds() - time.time()) < 60
    finally:
        containerd.ctr("images", "rm", tag)
    assert tag not in _images(containerd)


# --------------------------------------------------------------------------- lifecycle


def test_restart_keeps_root_and_running_containers(
    fresh_containerd: ContainerdProcess, containerd_images: ContainerdImages, tmp_path: Path
) -> None:
    address = fresh_containerd.address
    with CriClient(fresh_containerd.channel(), tmp_path / "pods") as cri:
        pod = cri.run_pod("survivor")
        cid = cri.run_container(
            pod, "sleep", containerd_images.busybox_ref, command=["sleep", "600"]
        )
        assert cri.container_status(cid).state == rs.CONTAINER_RUNNING
        shims = shim_pids(address)
        assert shims

        fresh_containerd.restart()
        assert fresh_containerd.address == address
        assert fresh_containerd.version().version.startswith("1.6.")
        # the shims outlived the daemon, and containerd found them again
        assert shim_pids(address) == shims
        cri = CriClient(fresh_containerd.channel(), tmp_path / "pods")
        cri.pods.append(pod)
        assert cri.container_status(cid).state == rs.CONTAINER_RUNNING
        assert containerd_images.busybox_ref in _images(fresh_containerd)
        cri.stop_container(cid)
        assert cri.container_status(cid).state == rs.CONTAINER_EXITED
        cri.close()


@dataclass(frozen=True)
class Workload:
    pod_id: str
    container_id: str
    #: The container's process, as the host sees it.
    pid: int
    #: The pod's shim socket: containerd 1.6 names it
    #: /run/containerd/s/sha256(<containerd address>/<namespace>/<sandbox id>).
    shim_socket: Path


def _workload(process: ContainerdProcess, images: ContainerdImages) -> Workload:
    """A pod with a long-running container."""
    cri = CriClient(process.channel(), process.scratch / "pods")
    pod = cri.run_pod("cleanup")
    cid = cri.run_container(pod, "sleep", images.busybox_ref, command=["sleep", "600"])
    info = cri.runtime.ContainerStatus(
        rs.ContainerStatusRequest(container_id=cid, verbose=True), timeout=30
    ).info["info"]
    pid = int(json.loads(info)["pid"])
    assert pid > 0 and Path(f"/proc/{pid}").exists()
    name = hashlib.sha256(os.path.join(process.address, CRI_NAMESPACE, pod.id).encode())
    socket = SHIM_SOCKET_DIR / name.hexdigest()
    assert socket.is_socket(), "the pod's shim listens where containerd 1.6 puts it"
    return Workload(pod.id, cid, pid, socket)


def _assert_nothing_left(process: ContainerdProcess, workload: Workload) -> None:
    assert process.leftovers() == []
    assert process.sock_dir is not None and process.data_dir is not None
    assert not process.sock_dir.exists() and not process.data_dir.exists()
    assert mounts_under(process.sock_dir, process.data_dir) == []
    assert shim_pids(process.address) == []
    stat = Path(f"/proc/{workload.pid}/stat")
    assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"
    for cgroup_id in (workload.pod_id, workload.container_id):
        assert not list(Path("/sys/fs/cgroup").glob(f"*/*/{cgroup_id}"))
    assert not workload.shim_socket.exists()


def test_close_removes_pods_mounts_shims_and_directories(
    containerd_bin: Binaries, containerd_images: ContainerdImages
) -> None:
    process = ContainerdProcess(binaries=containerd_bin, sandbox_image=containerd_images.pause_ref)
    try:
        process.start()
        import_images(process, containerd_images.tar)
        workload = _workload(process, containerd_images)
        assert process.sock_dir is not None and process.data_dir is not None
        assert mounts_under(process.data_dir), "a running pod has mounts under the data dir"
        assert list(Path("/sys/fs/cgroup").glob(f"*/{CRI_NAMESPACE}/{workload.container_id}"))
    finally:
        process.close()
    _assert_nothing_left(process, workload)


def test_close_cleans_up_after_containerd_was_killed(
    containerd_bin: Binaries, containerd_images: ContainerdImages
) -> None:
    """With containerd gone, close() still kills the shims and containers and unmounts."""
    process = ContainerdProcess(binaries=containerd_bin, sandbox_image=containerd_images.pause_ref)
    try:
        process.start()
        import_images(process, containerd_images.tar)
        workload = _workload(process, containerd_images)
        assert process.process is not None
        os.kill(process.process.pid, signal.SIGKILL)
        process.process.wait(timeout=10)
        assert shim_pids(process.address), "the shims outlive a killed containerd"
        assert Path(f"/proc/{workload.pid}").exists()
    finally:
        process.close()
    _assert_nothing_left(process, workload)


# --------------------------------------------------------------------------- registry


def test_images_pushed_to_the_test_registry_pull_through_the_cri(
    containerd_bin: Binaries,
    containerd_images: ContainerdImages,
    registry: RegistryProcess,
    tmp_path: Path,
) -> None:
    push_images(containerd_images, registry.url, repository_prefix="crishim-ctd")
    ref = f"{registry.host}/crishim-ctd/busybox:1"
    process = ContainerdProcess(
        binaries=containerd_bin,
        sandbox_image=containerd_images.pause_ref,
        plain_http_registries=[registry.host],
    )
    with process:
        cri = CriClient(process.channel(), tmp_path / "pods")
        response = cri.images.PullImage(
            api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref)), timeout=60
        )
        assert response.image_ref == containerd_images.busybox.id
        images = _images(process)
        assert images[ref].target.digest == containerd_images.busybox.manifest.digest
        # a CRI pull records the image under its tag, its repo digest and its ID
        digest_ref = f"{ref.rsplit(':', 1)[0]}@{containerd_images.busybox.manifest.digest}"
        assert {ref, digest_ref, containerd_images.busybox.id} <= set(images)
        status = cri.images.ImageStatus(
            api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=ref)), timeout=30
        )
        assert list(status.image.repo_digests) == [digest_ref]
        # the pulled image runs (the pause image is pulled by name from nowhere:
        # import it, as a node would have it)
        import_images(process, containerd_images.tar)
        with cri:
            pod = cri.run_pod("pulled")
            cid = cri.run_container(pod, "echo", ref, command=["echo", "pulled"])
            assert cri.wait_exited(cid).exit_code == 0
            assert cri.log_lines(pod, cid) == ["pulled"]
