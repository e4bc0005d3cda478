"""The registry-cache backend passes the CRI contract kit (crishim.testing.conformance)
over a store filled by real pulls from the test registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest
from crishim_plugins.registry_cache import RegistryCacheBackend, RegistryCacheOptions
from registry.helpers import (
    cache_options,
    contract_images,
    contract_pulls,
    plain_endpoint,
    platform,
)
from registry.images import PLATFORM, RegistryImages
from registry.process import RegistryProcess

from crishim import reference
from crishim.testing.conformance import ContractSetup, CriContract
from crishim.types import BackendContext, PullRequest

pytest_plugins = ["registry.fixtures"]


class TestRegistryCache(CriContract):
    removable = True
    #: Set by the module fixture below before the kit's fixtures run.
    registry: ClassVar[RegistryProcess]
    images: ClassVar[RegistryImages]

    def cri_setup(self, root: Path) -> ContractSetup:
        host, images = self.registry.host, self.images
        mirror = {"endpoints": [plain_endpoint(self.registry.url)]}
        options: dict[str, Any] = cache_options(root / "store", {host: mirror, "gcr.io": mirror})
        backend = RegistryCacheBackend(
            BackendContext(name="cache", platform=platform(), config_dir=root),
            RegistryCacheOptions.model_validate(options),
        )
        backend.start()
        try:
            for ref in contract_pulls(host, images):
                backend.pull_image(PullRequest(ref=reference.parse(ref)))
        finally:
            backend.close()
        return ContractSetup(
            backends=[{"name": "cache", "type": "registry-cache", "options": options}],
            images=contract_images(host, images),
            config={"platform": dict(PLATFORM)},
        )


@pytest.fixture(scope="module", autouse=True)
def _contract_registry(registry: RegistryProcess, images: RegistryImages) -> None:
    TestRegistryCache.registry = registry
    TestRegistryCache.images = images
