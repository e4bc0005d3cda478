"""pytest fixtures and helpers for the registry-cache tests.

Test modules load the fixtures with ``pytest_plugins = ["registry.fixtures"]``.
The session starts one plain-HTTP registry and pushes the test images to
it; registries with TLS or auth started by a module share its storage
directory, so they serve the same images without pushing again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from crishim.testing.server import RunningShim

from .helpers import BASIC_PASSWORD, BASIC_USER, plain_config
from .images import RegistryImages, build_images, push_images
from .pki import Pki, make_pki
from .process import RegistryProcess, registry_binary
from .proxy import TamperingProxy


@pytest.fixture(scope="session")
def registry_bin() -> str:
    """The registry binary (the test fails under CI, skips elsewhere, when missing)."""
    return registry_binary()


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> RegistryImages:
    return build_images(tmp_path_factory.mktemp("registry-images") / "layout")


@pytest.fixture(scope="session")
def registry_storage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("registry-storage")


@pytest.fixture(scope="session")
def registry(
    registry_bin: str,
    images: RegistryImages,
    registry_storage: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RegistryProcess]:
    """A plain-HTTP registry on 127.0.0.1 holding every test image."""
    process = RegistryProcess(registry_storage, tmp_path_factory.mktemp("registry-plain"))
    with process:
        push_images(images, process.url)
        yield process


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def proxy(registry: RegistryProcess) -> Iterator[TamperingProxy]:
    """A tampering proxy in front of the session registry (reset by ``clean_proxy``)."""
    p = TamperingProxy(registry.port).start()
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture
def clean_proxy(proxy: TamperingProxy) -> Iterator[TamperingProxy]:
    proxy.reset()
    try:
        yield proxy
    finally:
        proxy.reset()
        proxy.wait_idle(10)


@pytest.fixture(scope="session")
def basic_registry(
    registry: RegistryProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RegistryProcess]:
    """The session registry's storage behind htpasswd (bcrypt) basic auth."""
    import bcrypt

    workdir = tmp_path_factory.mktemp("registry-basic")
    hashed = bcrypt.hashpw(BASIC_PASSWORD.encode(), bcrypt.gensalt(rounds=4, prefix=b"2a"))
    htpasswd = workdir / "htpasswd"
    htpasswd.write_text(f"{BASIC_USER}:{hashed.decode()}\n")
    with RegistryProcess(registry.storage, workdir, htpasswd=htpasswd) as process:
        yield process


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A registry-cache store directory of the test's own (not created)."""
    return tmp_path / "store"


@pytest.fixture
def shim(
    crishim_server: Callable[..., RunningShim], store: Path, registry: RegistryProcess
) -> RunningShim:
    """A server with one registry-cache backend over ``store``, pulling from the
    plain registry; a module serving another config defines its own ``shim``."""
    return crishim_server(plain_config(store, registry))
