"""The containerd backend passes the CRI contract kit (crishim.testing.conformance).

Each setup gets a containerd namespace of its own on the session's
containerd, filled by real pulls through the backend from the test
registry, so the kit's exact lists see only what the setup pulled.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, ClassVar

import pytest
from containerd.process import ContainerdProcess
from crishim_plugins.containerd import ContainerdBackend, ContainerdOptions
from registry.helpers import plain_endpoint, platform
from registry.images import PLATFORM, RegistryImages
from registry.process import RegistryProcess

from crishim import reference
from crishim.testing.conformance import ContractSetup, CriContract, ExpectedImage
from crishim.types import BackendContext, PullRequest

pytest_plugins = ["registry.fixtures", "containerd.fixtures"]

_namespaces = itertools.count(1)


class TestContainerd(CriContract):
    removable = True
    #: Set by the module fixture below before the kit's fixtures run.
    containerd: ClassVar[ContainerdProcess]
    registry: ClassVar[RegistryProcess]
    images: ClassVar[RegistryImages]

    def cri_setup(self, root: Path) -> ContractSetup:
        host, images = self.registry.host, self.images
        mirror = {"endpoints": [plain_endpoint(self.registry.url)]}
        options: dict[str, Any] = {
            "address": f"unix://{self.containerd.address}",
            "namespace": f"crishim-kit-{next(_namespaces)}",
            "trust_env": False,
            "registries": {host: mirror, "gcr.io": mirror},
        }
        backend = ContainerdBackend(
            BackendContext(name="node", platform=platform(), config_dir=root),
            ContainerdOptions.model_validate(options),
        )
        docker_by_digest = f"{host}/test/docker@{images.docker.manifest.digest}"
        backend.start()
        try:
            for ref in (
                f"{host}/test/small:1",
                "gcr.io/test/small:also",
                f"{host}/test/multi:1",
                docker_by_digest,
            ):
                backend.pull_image(PullRequest(ref=reference.parse(ref)))
        finally:
            backend.close()
        small_digest = images.small.manifest.digest
        return ContractSetup(
            backends=[{"name": "node", "type": "containerd", "options": options}],
            images=[
                ExpectedImage(
                    id=images.small.id,
                    repo_tags=[f"{host}/test/small:1", "gcr.io/test/small:also"],
                    repo_digests=[
                        f"{host}/test/small@{small_digest}",
                        f"gcr.io/test/small@{small_digest}",
                    ],
                    user="1000",
                    size=images.small.size,
                ),
                ExpectedImage(
                    id=images.multi_arm64.id,
                    repo_tags=[f"{host}/test/multi:1"],
                    repo_digests=[f"{host}/test/multi@{images.multi.descriptor.digest}"],
                    size=images.multi_arm64.size,
                ),
                ExpectedImage(
                    id=images.docker.id, repo_digests=[docker_by_digest], size=images.docker.size
                ),
            ],
            config={"platform": dict(PLATFORM)},
        )


@pytest.fixture(scope="module", autouse=True)
def _contract_containerd(
    containerd: ContainerdProcess, registry: RegistryProcess, images: RegistryImages
) -> None:
    TestContainerd.containerd = containerd
    TestContainerd.registry = registry
    TestContainerd.images = images
