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
from registry.helpers import contract_images, contract_pulls, plain_endpoint, platform
from registry.images import PLATFORM, RegistryImages
from registry.process import RegistryProcess

from crishim import reference
from crishim.testing.conformance import ContractSetup, CriContract
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
        backend.start()
        try:
            for ref in contract_pulls(host, images):
                backend.pull_image(PullRequest(ref=reference.parse(ref)))
        finally:
            backend.close()
        return ContractSetup(
            backends=[{"name": "node", "type": "containerd", "options": options}],
            images=contract_images(host, images),
            config={"platform": dict(PLATFORM)},
        )


@pytest.fixture(scope="module", autouse=True)
def _contract_containerd(
    containerd: ContainerdProcess, registry: RegistryProcess, images: RegistryImages
) -> None:
    TestContainerd.containerd = containerd
    TestContainerd.registry = registry
    TestContainerd.images = images
