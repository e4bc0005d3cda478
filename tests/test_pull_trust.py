"""Pulls a node can trust: authenticated re-pulls, a watchdog on blob downloads,
resumed and failed-over downloads, against the real test registry and the
fault-injecting proxy."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from registry.helpers import (
    BASIC_PASSWORD,
    BASIC_USER,
    cache_config,
    check_store,
    plain_endpoint,
    pull,
    pull_error,
)
from registry.images import RegistryImages
from registry.process import RegistryProcess
from registry.proxy import TamperingProxy

from crishim.cri.runtime.v1 import api_pb2
from crishim.testing.server import RunningShim, running_server

pytest_plugins = ["registry.fixtures"]

Server = Callable[..., RunningShim]


def _auth(**fields: str) -> api_pb2.AuthConfig:
    return api_pb2.AuthConfig(**fields)


RIGHT = {"username": BASIC_USER, "password": BASIC_PASSWORD}


# -- authenticated re-pulls -------------------------------------------------------------


@pytest.mark.parametrize("verify", [True, False], ids=["verified", "verification-off"])
def test_a_held_image_pulled_by_digest_still_needs_the_credentials(
    verify: bool,
    tmp_path: Path,
    basic_registry: RegistryProcess,
    images: RegistryImages,
) -> None:
    host = basic_registry.host
    options: dict[str, Any] = {"endpoints": [plain_endpoint(basic_registry.url)]}
    if not verify:
        options["verify_held_images"] = False
    config = cache_config(tmp_path / "store", {host: options})
    by_digest = f"{host}/test/small@{images.small.manifest.digest}"
    with running_server(config) as shim:
        assert pull(shim, by_digest, auth=_auth(**RIGHT)).image_ref == images.small.id
        if verify:
            # held, but this pod brings no credentials: refused as a fresh pull would be
            err = pull_error(shim, by_digest)
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED, err.details()
            err = pull_error(shim, by_digest, auth=_auth(username=BASIC_USER, password="wrong"))
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED, err.details()
            assert BASIC_PASSWORD not in (err.details() or "")
        else:
            assert pull(shim, by_digest).image_ref == images.small.id
        assert pull(shim, by_digest, auth=_auth(**RIGHT)).image_ref == images.small.id
        # by tag the tag is resolved again anyway: without credentials, refused
        err = pull_error(shim, f"{host}/test/small:1")
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_re_pull_by_digest_fetches_no_blob(
    tmp_path: Path, registry: RegistryProcess, images: RegistryImages, proxy: TamperingProxy
) -> None:
    proxy.reset()
    config = cache_config(tmp_path / "store", {registry.host: {"endpoints": [proxy_ep(proxy)]}})
    by_digest = f"{registry.host}/test/small@{images.small.manifest.digest}"
    with running_server(config) as shim:
        pull(shim, by_digest)
        gets = sum(proxy.counts.values())
        pull(shim, by_digest)
        # the second pull asked for the manifest (a HEAD), fetched nothing
        assert sum(proxy.counts.values()) == gets


def proxy_ep(proxy: TamperingProxy) -> dict[str, Any]:
    return {"url": proxy.url, "plain_http": True}


# -- the watchdog ------------------------------------------------------------------------


@pytest.fixture
def slow(registry: RegistryProcess) -> Iterator[TamperingProxy]:
    p = TamperingProxy(registry.port).start()
    try:
        yield p
    finally:
        p.stop()


def _big_layer(images: RegistryImages) -> str:
    return images.big.layers[0].digest


def test_a_stalled_download_is_cut_within_its_timeout_and_resumed(
    tmp_path: Path, registry: RegistryProcess, images: RegistryImages, slow: TamperingProxy
) -> None:
    layer = _big_layer(images)
    slow.stall_after[layer] = 512 * 1024
    config = cache_config(
        tmp_path / "store",
        {registry.host: {"endpoints": [proxy_ep(slow)]}},
        pull_progress_timeout=2,
    )
    with running_server(config) as shim:
        started = time.monotonic()
        assert pull(shim, f"{registry.host}/test/big:1").image_ref == images.big.id
        took = time.monotonic() - started
    # cut after about 2 s without a byte (not the 60 s read timeout), then resumed
    assert took < 2 + 1 + 10, took
    assert [r for p, r in slow.ranges if p.endswith(layer)] == ["bytes=524288-"]
    check_store(tmp_path / "store")


def test_a_dripping_download_under_min_pull_rate_fails_over_and_says_why(
    tmp_path: Path, registry: RegistryProcess, images: RegistryImages, slow: TamperingProxy
) -> None:
    slow.rate = 20 * 1024  # 20 kB/s: far under the minimum
    config = cache_config(
        tmp_path / "store",
        {registry.host: {"endpoints": [proxy_ep(slow), plain_endpoint(registry.url)]}},
        min_pull_rate=256 * 1024,
        min_pull_rate_window=1,
    )
    with running_server(config) as shim:
        assert pull(shim, f"{registry.host}/test/big:1").image_ref == images.big.id
    # the blob came from the second endpoint, resumed where the first left it
    layer = _big_layer(images)
    assert slow.blob_gets(layer) == 1
    check_store(tmp_path / "store")


def test_a_drip_with_nowhere_else_to_go_is_unavailable_naming_blob_endpoint_and_rate(
    tmp_path: Path, registry: RegistryProcess, images: RegistryImages, slow: TamperingProxy
) -> None:
    slow.rate = 10 * 1024
    config = cache_config(
        tmp_path / "store",
        {registry.host: {"endpoints": [proxy_ep(slow)]}},
        min_pull_rate=256 * 1024,
        min_pull_rate_window=1,
    )
    with running_server(config) as shim:
        err = pull_error(shim, f"{registry.host}/test/big:1")
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    details = err.details() or ""
    assert _big_layer(images) in details
    assert slow.url in details
    assert "bytes/s" in details and "min_pull_rate" in details


# -- resume and fail over -----------------------------------------------------------


def test_a_reset_at_half_resumes_with_range_and_the_blob_verifies(
    tmp_path: Path, registry: RegistryProcess, images: RegistryImages, slow: TamperingProxy
) -> None:
    layer = images.big.layers[0]
    half = layer.size // 2
    slow.break_after[layer.digest] = half
    config = cache_config(tmp_path / "store", {registry.host: {"endpoints": [proxy_ep(slow)]}})
    with running_server(config) as shim:
        assert pull(shim, f"{registry.host}/test/big:1").image_ref == images.big.id
    assert [r for p, r in slow.ranges if p.endswith(layer.digest)] == [f"bytes={half}-"]
    # downloaded once and a half, not twice: the first half was kept
    assert slow.sent[f"/v2/test/big/blobs/{layer.digest}"] == layer.size
    check_store(tmp_path / "store")


def test_a_corrupt_resumed_blob_is_still_data_loss(
    tmp_path: Path, registry: RegistryProcess, images: RegistryImages, slow: TamperingProxy
) -> None:
    layer = images.big.layers[0]
    slow.break_after[layer.digest] = layer.size // 2
    slow.tamper.add(layer.digest)  # the first response's first byte is flipped
    config = cache_config(tmp_path / "store", {registry.host: {"endpoints": [proxy_ep(slow)]}})
    with running_server(config) as shim:
        err = pull_error(shim, f"{registry.host}/test/big:1")
    assert err.code() == grpc.StatusCode.DATA_LOSS
    assert check_store(tmp_path / "store") == {}
