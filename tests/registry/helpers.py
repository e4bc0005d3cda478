"""Helpers for the registry-cache tests: configs, calls, store checks."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar, cast

import grpc
import pytest

from crishim.cri.runtime.v1 import api_pb2
from crishim.model import Platform
from crishim.oci.layout import Layout, measure
from crishim.testing.conformance import ExpectedImage
from crishim.testing.server import RunningShim

from .images import PLATFORM, RegistryImages
from .process import RegistryProcess

#: The user the basic-auth registry (fixture ``basic_registry``) knows, and its
#: password (a colon in it).
BASIC_USER = "alice"
BASIC_PASSWORD = "pa55:w0rd-with-colon"

# -- configs ---------------------------------------------------------------------


def plain_endpoint(url: str) -> dict[str, Any]:
    return {"url": url, "plain_http": True}


def cache_options(store: Path, registries: Mapping[str, Any], **options: Any) -> dict[str, Any]:
    """Options of a ``registry-cache`` backend; the environment's proxies are ignored
    (the tests' traffic stays on loopback whatever HTTP(S)_PROXY says)."""
    return {"path": str(store), "registries": dict(registries), "trust_env": False, **options}


def cache_config(
    store: Path, registries: Mapping[str, Any], *others: Mapping[str, Any], **options: Any
) -> dict[str, Any]:
    """A crishim config with one ``registry-cache`` backend named ``cache``."""
    return {
        "platform": dict(PLATFORM),
        "backends": [
            {
                "name": "cache",
                "type": "registry-cache",
                "options": cache_options(store, registries, **options),
            },
            *(dict(o) for o in others),
        ],
    }


def plain_config(store: Path, registry: RegistryProcess, **options: Any) -> dict[str, Any]:
    """The cache pointed at the session registry under its own name."""
    return cache_config(
        store, {registry.host: {"endpoints": [plain_endpoint(registry.url)]}}, **options
    )


def platform() -> Platform:
    return Platform(PLATFORM["os"], PLATFORM["architecture"], PLATFORM["variant"])


# -- calls -----------------------------------------------------------------------


def pull(
    shim: RunningShim,
    ref: str,
    *,
    auth: api_pb2.AuthConfig | None = None,
    timeout: float = 60,
) -> api_pb2.PullImageResponse:
    request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref), auth=auth)
    return cast(api_pb2.PullImageResponse, shim.images.PullImage(request, timeout=timeout))


def pull_error(
    shim: RunningShim,
    ref: str,
    *,
    auth: api_pb2.AuthConfig | None = None,
    timeout: float = 60,
) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        pull(shim, ref, auth=auth, timeout=timeout)
    return info.value


def pull_future(
    shim: RunningShim, ref: str, *, timeout: float = 60, runtime_handler: str = ""
) -> grpc.Future:
    """A PullImage call in flight (``.result()`` to wait, ``.cancel()`` to give up)."""
    spec = api_pb2.ImageSpec(image=ref, runtime_handler=runtime_handler)
    request = api_pb2.PullImageRequest(image=spec)
    return shim.images.PullImage.future(request, timeout=timeout)


# -- the status endpoint (GET /pulls) ----------------------------------------------------

T = TypeVar("T")


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("crishim", timeout=timeout)
        self.socket_path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def get_status(path: Path, page: str = "/pulls") -> tuple[int, Any]:
    """(HTTP status, parsed JSON body) of ``GET page`` on the status socket ``path``."""
    connection = _UnixHTTPConnection(path, timeout=10)
    try:
        connection.request("GET", page)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def board(shim: RunningShim) -> dict[str, Any]:
    """The server's pulls, as its status endpoint serves them."""
    assert shim.server.status is not None, "the server runs no status endpoint"
    code, body = get_status(shim.server.status.path)
    assert code == 200, body
    return cast(dict[str, Any], body)


def wait_until(probe: Callable[[], T | None], what: str, timeout: float = 15) -> T:
    """Ask ``probe`` every few milliseconds until it answers something truthy; return it.

    Fails naming ``what`` when ``timeout`` seconds pass first (a bound, not a measurement).
    """
    end = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > end:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


# -- checking a store ---------------------------------------------------------------


def check_store(root: Path) -> dict[str, str]:
    """Assert the store is valid; return {image name: entry digest}.

    Valid: index.json parses; every file under blobs/ is a committed blob
    whose content matches its name (no temp files there); every entry
    resolves to an image whose blobs are all present.
    """
    index = json.loads((root / "index.json").read_bytes())
    assert isinstance(index, dict) and isinstance(index["manifests"], list)
    blobs = root / "blobs"
    present: set[str] = set()
    for path in blobs.rglob("*"):
        if path.is_dir():
            continue
        algorithm = path.parent.name
        assert algorithm in ("sha256", "sha512"), f"unexpected file {path}"
        actual = hashlib.new(algorithm, path.read_bytes()).hexdigest()
        assert actual == path.name, f"blob {path} does not match its name"
        present.add(f"{algorithm}:{path.name}")
    layout = Layout(root, platform())
    names: dict[str, str] = {}
    for entry in index["manifests"]:
        result = layout.resolve(entry)
        assert result.record is not None, f"entry {entry} cannot be served: {result.problem}"
        record = result.record
        needed = {record.id, record.manifest_digest, entry["digest"]}
        config = json.loads(record.config)
        assert config["rootfs"]["diff_ids"]
        assert needed <= present, f"entry {entry['digest']} misses {needed - present}"
        names[entry["annotations"]["io.containerd.image.name"]] = entry["digest"]
    return names


def ingest_files(root: Path) -> list[Path]:
    directory = root / ".ingest"
    return sorted(directory.iterdir()) if directory.is_dir() else []


def usage_of(root: Path) -> tuple[int, int]:
    usage = measure(root)
    return usage.used_bytes, usage.inodes_used


def fsinfo(shim: RunningShim) -> tuple[int, int]:
    (fs,) = shim.fsinfo().image_filesystems
    return fs.used_bytes.value, fs.inodes_used.value


def blob_exists(root: Path, digest: str) -> bool:
    algorithm, _, hexpart = digest.partition(":")
    return os.path.exists(root / "blobs" / algorithm / hexpart)


# -- the contract kit's setups -------------------------------------------------------


def contract_pulls(host: str, images: RegistryImages) -> list[str]:
    """What a pulling backend's contract setup pulls (with ``gcr.io`` mirrored to ``host``)."""
    return [
        f"{host}/test/small:1",
        "gcr.io/test/small:also",
        f"{host}/test/multi:1",
        f"{host}/test/docker@{images.docker.manifest.digest}",
        f"{host}/test/oras:1",
    ]


def contract_images(host: str, images: RegistryImages) -> list[ExpectedImage]:
    """What the CRI must then report (platform: :data:`registry.images.PLATFORM`)."""
    small_digest = images.small.manifest.digest
    return [
        ExpectedImage(
            id=images.small.id,
            repo_tags=[f"{host}/test/small:1", "gcr.io/test/small:also"],
            repo_digests=[f"{host}/test/small@{small_digest}", f"gcr.io/test/small@{small_digest}"],
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
            id=images.docker.id,
            repo_digests=[f"{host}/test/docker@{images.docker.manifest.digest}"],
            size=images.docker.size,
        ),
        # an OCI artifact (an image volume's content): no user, ID its manifest digest
        ExpectedImage(
            id=images.oras.id,
            repo_tags=[f"{host}/test/oras:1"],
            repo_digests=[f"{host}/test/oras@{images.oras.manifest.digest}"],
            size=images.oras.size,
        ),
    ]
