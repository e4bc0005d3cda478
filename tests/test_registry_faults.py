"""Registry-cache pulls when things go wrong: corrupted content, deadlines,
cancellation, and a process killed with SIGKILL mid-pull.

A tampering proxy sits between crishim and the registry (``proxied.test``
is served through it); crash tests run ``crishim pull`` in a subprocess.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from registry.helpers import (
    blob_exists,
    cache_config,
    check_store,
    ingest_files,
    plain_endpoint,
    pull,
    pull_error,
    wait_until,
)
from registry.images import RegistryImages
from registry.proxy import TamperingProxy

from crishim.cri.runtime.v1 import api_pb2
from crishim.testing.server import RunningShim, running_server

pytest_plugins = ["registry.fixtures"]

Server = Callable[..., RunningShim]
SMALL = "proxied.test/test/small"


def proxied_config(store: Path, proxy: TamperingProxy, **options: Any) -> dict[str, Any]:
    return cache_config(
        store, {"proxied.test": {"endpoints": [plain_endpoint(proxy.url)]}}, **options
    )


@pytest.fixture
def shim(crishim_server: Server, store: Path, clean_proxy: TamperingProxy) -> RunningShim:
    return crishim_server(proxied_config(store, clean_proxy))


def assert_nothing_kept(store: Path, shim: RunningShim) -> None:
    assert shim.list() == []
    assert check_store(store) == {}
    assert ingest_files(store) == []


# --------------------------------------------------------------------------- digest mismatch


def test_corrupted_layer_is_data_loss_and_not_kept(
    shim: RunningShim, clean_proxy: TamperingProxy, images: RegistryImages, store: Path
) -> None:
    layer = images.small.layers[1].digest
    clean_proxy.tamper.add(layer)
    err = pull_error(shim, f"{SMALL}:1")
    assert err.code() == grpc.StatusCode.DATA_LOSS
    assert f"{SMALL}:1" in err.details()
    assert "proxied.test" in err.details()
    assert layer in err.details()
    assert not blob_exists(store, layer)
    assert_nothing_kept(store, shim)
    clean_proxy.tamper.clear()
    assert pull(shim, f"{SMALL}:1").image_ref == images.small.id
    check_store(store)


def test_corrupted_manifest_by_digest_is_data_loss(
    shim: RunningShim, clean_proxy: TamperingProxy, images: RegistryImages, store: Path
) -> None:
    digest = images.small.manifest.digest
    clean_proxy.tamper.add(digest)
    err = pull_error(shim, f"{SMALL}@{digest}")
    assert err.code() == grpc.StatusCode.DATA_LOSS
    assert digest in err.details()
    assert_nothing_kept(store, shim)


def test_manifest_not_matching_the_registry_digest_is_data_loss(
    shim: RunningShim, clean_proxy: TamperingProxy, store: Path
) -> None:
    clean_proxy.tamper.add("manifests/1")
    err = pull_error(shim, f"{SMALL}:1")
    assert err.code() == grpc.StatusCode.DATA_LOSS
    assert "registry says" in err.details()
    assert_nothing_kept(store, shim)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"this is not json", "not valid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (
            json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {
                        "mediaType": "application/vnd.oci.image.config.v1+json",
                        "digest": "sha256:../../etc/passwd",
                        "size": 1,
                    },
                    "layers": [],
                }
            ).encode(),
            "invalid digest",
        ),
        (
            json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {
                        "mediaType": "application/vnd.oci.image.config.v1+json",
                        "digest": "sha256:" + "a" * 64,
                        "size": -5,
                    },
                    "layers": [],
                }
            ).encode(),
            "invalid size",
        ),
    ],
    ids=["not-json", "not-object", "bad-digest", "bad-size"],
)
def test_malformed_manifest_is_a_clear_error(
    shim: RunningShim, clean_proxy: TamperingProxy, store: Path, body: bytes, problem: str
) -> None:
    headers = {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}
    clean_proxy.override["manifests/broken"] = (200, headers, body)
    err = pull_error(shim, f"{SMALL}:broken")
    assert err.code() == grpc.StatusCode.DATA_LOSS
    assert problem in err.details()
    assert f"{SMALL}:broken" in err.details()
    assert_nothing_kept(store, shim)


def test_blob_longer_than_its_descriptor_is_data_loss(
    shim: RunningShim, clean_proxy: TamperingProxy, images: RegistryImages, store: Path
) -> None:
    layer = images.small.layers[0]
    clean_proxy.override[f"blobs/{layer.digest}"] = (200, {}, b"x" * (layer.size + 1000))
    err = pull_error(shim, f"{SMALL}:1")
    assert err.code() == grpc.StatusCode.DATA_LOSS
    assert f"more than the {layer.size} bytes" in err.details()
    assert_nothing_kept(store, shim)


# --------------------------------------------------------------------------- deadline, cancel


def test_deadline_stops_the_pull_and_keeps_nothing(
    shim: RunningShim, clean_proxy: TamperingProxy, images: RegistryImages, store: Path
) -> None:
    clean_proxy.rate = 300_000  # the big layer would take ~10 s
    started = time.monotonic()
    err = pull_error(shim, "proxied.test/test/big:1", timeout=1.5)
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 10
    # the server gives up too: the download stops and its temp file goes
    assert clean_proxy.wait_idle(10), "the server kept downloading after the deadline"
    big_layer = images.big.layers[0]
    assert 0 < clean_proxy.sent[f"/v2/test/big/blobs/{big_layer.digest}"] < big_layer.size
    assert not blob_exists(store, big_layer.digest)
    assert_nothing_kept(store, shim)
    # and nothing is wedged: the next pull (no throttle) completes
    clean_proxy.rate = None
    assert pull(shim, "proxied.test/test/big:1").image_ref == images.big.id
    check_store(store)


def test_cancelled_pull_stops_and_keeps_nothing(
    shim: RunningShim, clean_proxy: TamperingProxy, store: Path
) -> None:
    clean_proxy.rate = 300_000
    request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image="proxied.test/test/big:1"))
    call = shim.images.PullImage.future(request, timeout=60)
    assert clean_proxy.blob_started.wait(20)
    call.cancel()
    with pytest.raises(grpc.FutureCancelledError):
        call.result(timeout=10)
    assert clean_proxy.wait_idle(10), "the server kept downloading after the cancel"
    # the slot is free at once; the backend's pull ends on its own thread when it
    # next looks at the cancel, removing its partial file then: wait for that
    wait_until(lambda: ingest_files(store) == [], "the partial download to be removed")
    assert_nothing_kept(store, shim)


# --------------------------------------------------------------------------- crashes


def _cli_config(tmp_path: Path, store: Path, proxy: TamperingProxy) -> Path:
    config = proxied_config(store, proxy)
    config["state_dir"] = str(tmp_path / "state")
    path = tmp_path / "crishim.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _cli(config: Path, ref: str, **env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "crishim.cli", "pull", "-q", "--config", str(config), ref],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **env},
    )


@pytest.mark.parametrize(
    "point",
    [
        "registry:mid-blob",
        "store:before-commit",
        "store:after-commit",
        "registry:before-index",
        "atomic:before-rename",
        "atomic:after-rename",
    ],
)
def test_killed_at_any_point_leaves_a_valid_store(
    crishim_server: Server,
    tmp_path: Path,
    store: Path,
    clean_proxy: TamperingProxy,
    images: RegistryImages,
    point: str,
) -> None:
    config = _cli_config(tmp_path, store, clean_proxy)
    with running_server(proxied_config(store, clean_proxy)) as first:
        pull(first, f"{SMALL}:1")
    before = check_store(store)
    victim = _cli(config, "proxied.test/test/big:1", CRISHIM_FAULT=point)
    assert victim.wait(60) == -signal.SIGKILL, (point, victim.stderr and victim.stderr.read())
    after = check_store(store)
    assert set(before) <= set(after)
    if point == "atomic:after-rename":
        assert "proxied.test/test/big:1" in after
    else:
        assert after == before
    shim = crishim_server(proxied_config(store, clean_proxy))
    assert ingest_files(store) == [], "temp files of the killed process are removed at start"
    assert shim.status(f"{SMALL}:1").image.id == images.small.id
    assert pull(shim, "proxied.test/test/big:1").image_ref == images.big.id
    assert {image.id for image in shim.list()} == {images.small.id, images.big.id}
    check_store(store)


def test_sigkill_mid_download_then_pull_again(
    crishim_server: Server,
    tmp_path: Path,
    store: Path,
    clean_proxy: TamperingProxy,
    images: RegistryImages,
) -> None:
    config = _cli_config(tmp_path, store, clean_proxy)
    clean_proxy.rate = 300_000
    victim = _cli(config, "proxied.test/test/big:1")
    try:
        end = time.monotonic() + 30
        while time.monotonic() < end and not any(p.stat().st_size > 0 for p in ingest_files(store)):
            time.sleep(0.05)
        assert ingest_files(store), "the pull never started writing"
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
    assert check_store(store) == {}
    clean_proxy.rate = None
    shim = crishim_server(proxied_config(store, clean_proxy))
    assert ingest_files(store) == []
    assert pull(shim, "proxied.test/test/big:1").image_ref == images.big.id
    check_store(store)


def test_redirect_query_strings_are_redacted_from_errors(
    shim: RunningShim,
    clean_proxy: TamperingProxy,
    images: RegistryImages,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A blob redirect to storage carries a signed query; it never shows."""
    from registry.process import free_port

    caplog.set_level(logging.DEBUG)
    layer = images.small.layers[0]
    target = f"http://127.0.0.1:{free_port()}/bucket/blob?X-Signature=s3cr3t-signature&e=1"
    clean_proxy.override[f"blobs/{layer.digest}"] = (307, {"Location": target}, b"")
    err = pull_error(shim, f"{SMALL}:1")
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert f"{SMALL}:1" in err.details()
    assert "s3cr3t-signature" not in err.details() + caplog.text
    assert clean_proxy.blob_gets(layer.digest) == 1
