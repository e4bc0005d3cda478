"""pytest fixtures for tests that need a real containerd.

Test modules load them with ``pytest_plugins = ["containerd.fixtures"]``.
The session shares one containerd (``containerd``) with the busybox and
pause images imported into the ``k8s.io`` namespace; tests using it must
leave it as they found it (remove the pods, images and blobs they add).
A test that restarts, kills or reconfigures containerd takes
``fresh_containerd``, a daemon of its own with the same images.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .cri import CriClient
from .images import ContainerdImages, build_images, import_images
from .process import Binaries, ContainerdProcess, containerd_binaries


@pytest.fixture(scope="session")
def containerd_bin() -> Binaries:
    """containerd, ctr, the runc shim and runc (fail under CI, skip elsewhere, when missing)."""
    return containerd_binaries()


@pytest.fixture(scope="session")
def containerd_images(
    containerd_bin: Binaries, tmp_path_factory: pytest.TempPathFactory
) -> ContainerdImages:
    """The busybox and pause images: an OCI layout and its tar."""
    return build_images(tmp_path_factory.mktemp("containerd-images"))


def _started(binaries: Binaries, images: ContainerdImages) -> ContainerdProcess:
    process = ContainerdProcess(binaries=binaries, sandbox_image=images.pause_ref)
    process.start()
    try:
        import_images(process, images.tar)
    except BaseException:
        process.close()
        raise
    return process


@pytest.fixture(scope="session")
def containerd(
    containerd_bin: Binaries, containerd_images: ContainerdImages
) -> Iterator[ContainerdProcess]:
    """A containerd shared by the session, both images in ``k8s.io``; removed afterwards."""
    process = _started(containerd_bin, containerd_images)
    try:
        yield process
    finally:
        process.close()


@pytest.fixture
def fresh_containerd(
    containerd_bin: Binaries, containerd_images: ContainerdImages
) -> Iterator[ContainerdProcess]:
    """A containerd of the test's own (to restart or kill), both images in ``k8s.io``."""
    process = _started(containerd_bin, containerd_images)
    try:
        yield process
    finally:
        process.close()


@pytest.fixture
def cri(containerd: ContainerdProcess, tmp_path: Path) -> Iterator[CriClient]:
    """CRI stubs on the session containerd; pods go away after the test, logs under tmp_path."""
    with CriClient(containerd.channel(), tmp_path / "pods") as client:
        yield client
