"""The ``cri`` backend in front of containerd's own CRI passes the contract kit.

Each setup starts a containerd of its own (removal tests change its store)
holding the harness's busybox and pause images, imported with ``ctr``; the
front crishim's only backend forwards every call to containerd's CRI
plugin on containerd's socket.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest
from containerd.images import ContainerdImages, import_images
from containerd.process import Binaries, ContainerdProcess

from crishim.testing.conformance import ContractSetup, CriContract, ExpectedImage

pytest_plugins = ["containerd.fixtures"]


class TestCriInFrontOfContainerd(CriContract):
    removable = True
    binaries: ClassVar[Binaries]
    images: ClassVar[ContainerdImages]

    def cri_setup(self, root: Path) -> ContractSetup:
        images = self.images
        self._containerd = ContainerdProcess(binaries=self.binaries, sandbox_image=images.pause_ref)
        self._containerd.start()
        import_images(self._containerd, images.tar)
        return ContractSetup(
            backends=[
                {
                    "name": "containerd-cri",
                    "type": "cri",
                    "options": {"endpoint": f"unix://{self._containerd.address}"},
                }
            ],
            # images imported with ctr have names, no digest names (containerd's
            # CRI makes name@digest records only for its own pulls)
            # containerd's CRI sizes an image as crishim does (manifest, config, layers)
            images=[
                ExpectedImage(
                    id=images.busybox.id, repo_tags=[images.busybox_ref], size=images.busybox.size
                ),
                ExpectedImage(
                    id=images.pause.id, repo_tags=[images.pause_ref], size=images.pause.size
                ),
            ],
        )

    def cri_teardown(self, setup: ContractSetup) -> None:
        self._containerd.close()


@pytest.fixture(scope="module", autouse=True)
def _contract_containerd(containerd_bin: Binaries, containerd_images: ContainerdImages) -> None:
    TestCriInFrontOfContainerd.binaries = containerd_bin
    TestCriInFrontOfContainerd.images = containerd_images
