"""Runtime handlers (KEP-4216, ``RuntimeClassInImageCriApi``) through the real socket.

A backend serves the handlers its ``runtime_handlers`` list names, all for
its one platform (``backends[].platform``); the catalog routes every call by
(reference, handler). The fixtures here are one per handler/platform pair:

* ``""`` and ``runc-fast`` on linux/amd64 (one backend: two handlers, one platform);
* ``kata-arm64`` on linux/arm64/v8 (a backend of its own);

over a layout (oci-dir) or a registry (registry-cache) holding a
multi-platform index (amd64, arm64/v8, arm/v7) and a single-platform image.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import rpc_error
from cri_helpers import FAKE_PLUGINS, cri_backend, endpoint_of, fake_backend, upstream_server
from registry.helpers import cache_options, plain_endpoint
from registry.images import RegistryImages
from registry.process import RegistryProcess

from crishim.config import ConfigError
from crishim.cri.runtime.v1 import api_pb2
from crishim.testing.ocibuild import BuiltImage, BuiltIndex, LayoutBuilder
from crishim.testing.server import RunningShim, running_server

pytest_plugins = ["registry.fixtures"]

Server = Callable[..., RunningShim]

AMD64 = {"os": "linux", "architecture": "amd64"}
ARM64 = {"os": "linux", "architecture": "arm64", "variant": "v8"}
MULTI = "example.com/multi:1"
SINGLE = "example.com/single:1"


# --------------------------------------------------------------------------- calls


def spec(image: str, handler: str = "", **fields: str) -> api_pb2.ImageSpec:
    return api_pb2.ImageSpec(image=image, runtime_handler=handler, **fields)


def status(shim: RunningShim, ref: str, handler: str = "", verbose: bool = False) -> Any:
    request = api_pb2.ImageStatusRequest(image=spec(ref, handler), verbose=verbose)
    return shim.images.ImageStatus(request, timeout=30)


def listed(shim: RunningShim, ref: str = "", handler: str = "", *, stream: bool = False) -> Any:
    """(id, spec.runtime_handler) of every image ListImages (or StreamImages) answers."""
    flt = api_pb2.ImageFilter(image=spec(ref, handler))
    if stream:
        batches = shim.images.StreamImages(api_pb2.StreamImagesRequest(filter=flt), timeout=30)
        images = [image for batch in batches for image in batch.images]
    else:
        images = shim.images.ListImages(api_pb2.ListImagesRequest(filter=flt), timeout=30).images
    return sorted((image.id, image.spec.runtime_handler) for image in images)


def pull(shim: RunningShim, ref: str, handler: str = "", **fields: str) -> str:
    request = api_pb2.PullImageRequest(image=spec(ref, handler, **fields))
    return str(shim.images.PullImage(request, timeout=60).image_ref)


def remove(shim: RunningShim, ref: str, handler: str = "") -> None:
    shim.images.RemoveImage(api_pb2.RemoveImageRequest(image=spec(ref, handler)), timeout=30)


# --------------------------------------------------------------------------- the layout


@dataclass(frozen=True)
class Layout:
    path: Path
    multi: BuiltIndex
    amd64: BuiltImage
    arm64: BuiltImage
    single: BuiltImage


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Layout:
    b = LayoutBuilder(tmp_path_factory.mktemp("handlers") / "layout")
    amd64 = b.image(name="multi", architecture="amd64")
    arm64 = b.image(name="multi", architecture="arm64", variant="v8")
    arm = b.image(name="multi", architecture="arm", variant="v7")
    multi = b.index([amd64, arm64, arm])
    b.tag(multi, MULTI)
    single = b.image(name="single", architecture="amd64", user="1000")
    b.tag(single, SINGLE)
    return Layout(b.write(), multi, amd64, arm64, single)


def layout_backends(path: Path) -> list[dict[str, Any]]:
    """Two oci-dir backends over one layout: amd64 for '' and runc-fast, arm64 for kata-arm64."""
    return [
        {
            "name": "host",
            "type": "oci-dir",
            "options": {"path": str(path)},
            "runtime_handlers": ["", "runc-fast"],
            "platform": AMD64,
        },
        {
            "name": "vm",
            "type": "oci-dir",
            "options": {"path": str(path)},
            "runtime_handlers": ["kata-arm64"],
            "platform": ARM64,
        },
    ]


@pytest.fixture(scope="module")
def shim(layout: Layout) -> Iterator[RunningShim]:
    with running_server({"backends": layout_backends(layout.path)}) as running:
        yield running


# --------------------------------------------------------------------------- routing


@pytest.mark.parametrize(
    ("handler", "expected"),
    [("", "amd64"), ("runc-fast", "amd64"), ("kata-arm64", "arm64")],
)
def test_image_status_resolves_the_handlers_platform(
    shim: RunningShim, layout: Layout, handler: str, expected: str
) -> None:
    image = status(shim, MULTI, handler).image
    assert image.id == getattr(layout, expected).id
    assert image.spec.runtime_handler == handler
    assert list(image.repo_tags) == [MULTI]
    assert list(image.repo_digests) == [f"example.com/multi@{layout.multi.descriptor.digest}"]
    # by ID too, and only for a handler whose platform has it
    assert status(shim, image.id, handler).image.id == image.id
    other = layout.arm64 if expected == "amd64" else layout.amd64
    assert not status(shim, other.id, handler).HasField("image")


def test_verbose_info_names_the_handler(shim: RunningShim, layout: Layout) -> None:
    import json

    response = status(shim, MULTI, "kata-arm64", verbose=True)
    info = json.loads(response.info["info"])
    assert info["runtimeHandler"] == "kata-arm64"
    assert info["backend"] == "vm"
    assert info["imageSpec"]["architecture"] == "arm64"


CALLS: dict[str, Callable[[RunningShim, str], Any]] = {
    "ImageStatus": lambda shim, h: status(shim, MULTI, h),
    "PullImage": lambda shim, h: pull(shim, MULTI, h),
    "RemoveImage": lambda shim, h: remove(shim, MULTI, h),
    "ListImages": lambda shim, h: listed(shim, "", h),
    "ListImages by name": lambda shim, h: listed(shim, MULTI, h),
    "StreamImages": lambda shim, h: listed(shim, "", h, stream=True),
}


@pytest.mark.parametrize("call", CALLS, ids=list(CALLS))
@pytest.mark.parametrize("handler", ["kata", "runc-Fast", "x" * 300])
def test_an_unknown_handler_is_invalid_argument(
    shim: RunningShim, layout: Layout, call: str, handler: str
) -> None:
    err = rpc_error(CALLS[call], shim, handler)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = err.details() or ""
    shown = repr(handler) if len(handler) <= 80 else repr(handler[:77] + "...")
    assert f"runtime handler {shown} is not served by any configured backend" in details
    assert "known runtime handlers: '', 'runc-fast', 'kata-arm64'" in details
    assert len(details) < 400
    # and nothing happened
    assert status(shim, MULTI).image.id == layout.amd64.id


def test_lists_carry_the_handler_and_share_one_platforms_image(
    shim: RunningShim, layout: Layout
) -> None:
    # unfiltered: one entry per image ID; the index is two images (two
    # platforms), the single-platform image is one, under its first handler
    assert listed(shim) == sorted(
        [(layout.amd64.id, ""), (layout.arm64.id, "kata-arm64"), (layout.single.id, "")]
    )
    assert listed(shim, stream=True) == listed(shim)


@pytest.mark.parametrize(
    ("handler", "expected"),
    [("", "amd64"), ("runc-fast", "amd64"), ("kata-arm64", "arm64")],
)
def test_list_filters_honour_the_handler(
    shim: RunningShim, layout: Layout, handler: str, expected: str
) -> None:
    image = getattr(layout, expected)
    everything = sorted([(image.id, handler), (layout.single.id, handler)])
    if handler:  # an empty filter (proto3 cannot tell "" from unset) lists every handler's
        assert listed(shim, "", handler) == everything
        assert listed(shim, "", handler, stream=True) == everything
    assert listed(shim, MULTI, handler) == [(image.id, handler)]
    assert listed(shim, MULTI, handler, stream=True) == [(image.id, handler)]


def test_a_filter_by_name_alone_is_the_default_handlers(shim: RunningShim, layout: Layout) -> None:
    assert listed(shim, MULTI) == [(layout.amd64.id, "")]
    assert listed(shim, layout.arm64.id) == []


def test_without_a_pulling_backend_a_pull_answers_the_handlers_image(
    shim: RunningShim, layout: Layout
) -> None:
    assert pull(shim, MULTI, "kata-arm64") == layout.arm64.id
    assert pull(shim, MULTI, "runc-fast") == layout.amd64.id


def test_a_default_config_serves_the_default_handler_only(
    crishim_server: Server, layout: Layout
) -> None:
    shim = crishim_server(
        {"backends": [layout_backends(layout.path)[0] | {"runtime_handlers": [""]}]}
    )
    assert status(shim, SINGLE).image.spec.runtime_handler == ""
    err = rpc_error(status, shim, SINGLE, "runc-fast")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "known runtime handlers: ''" in (err.details() or "")


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("change", "key", "problem"),
    [
        # kata-arm64 would be served for two platforms
        (
            lambda b: b[0]["runtime_handlers"].append("kata-arm64"),
            "backends[1].runtime_handlers",
            "runtime handler 'kata-arm64' is served by backend host for platform linux/amd64 "
            "and by vm for linux/arm64/v8",
        ),
        (
            lambda b: b[1].update(runtime_handlers=["Kata"]),
            "backends[1].runtime_handlers",
            "'Kata' is not a runtime handler name",
        ),
        (
            lambda b: b[1].update(runtime_handlers=["kata", "kata"]),
            "backends[1].runtime_handlers",
            "a runtime handler is listed twice",
        ),
        (lambda b: b[1].update(runtime_handlers=[]), "backends[1].runtime_handlers", "at least 1"),
    ],
    ids=["two-platforms", "bad-name", "twice", "none"],
)
def test_handler_config_errors_name_the_key(
    layout: Layout, change: Callable[[list[dict[str, Any]]], None], key: str, problem: str
) -> None:
    backends = layout_backends(layout.path)
    change(backends)
    with pytest.raises(ConfigError) as info, running_server({"backends": backends}):
        pass
    assert any(k == key and problem in reason for k, reason in info.value.problems), info.value


def test_a_disabled_backend_does_not_count(crishim_server: Server, layout: Layout) -> None:
    backends = layout_backends(layout.path)
    backends[0]["runtime_handlers"].append("kata-arm64")
    backends[1]["enabled"] = False
    shim = crishim_server({"backends": backends})
    assert status(shim, MULTI, "kata-arm64").image.id == layout.amd64.id


# --------------------------------------------------------------------------- pulls


def pulling_backends(
    tmp_path: Path, registry: RegistryProcess, **options: Any
) -> list[dict[str, Any]]:
    """registry-cache for amd64 ('' and runc-fast) and one for arm64 (kata-arm64)."""
    registries = {registry.host: {"endpoints": [plain_endpoint(registry.url)]}}
    return [
        {
            "name": "amd",
            "type": "registry-cache",
            "options": cache_options(tmp_path / "amd", registries, **options),
            "runtime_handlers": ["", "runc-fast"],
            "platform": AMD64,
        },
        {
            "name": "arm",
            "type": "registry-cache",
            "options": cache_options(tmp_path / "arm", registries, **options),
            "runtime_handlers": ["kata-arm64"],
            "platform": ARM64,
        },
    ]


def test_a_pull_per_handler_is_one_image_per_platform(
    crishim_server: Server, tmp_path: Path, registry: RegistryProcess, images: RegistryImages
) -> None:
    shim = crishim_server({"backends": pulling_backends(tmp_path, registry)})
    ref = f"{registry.host}/test/multi:1"
    assert pull(shim, ref) == images.multi_amd64.id
    assert pull(shim, ref, "kata-arm64") == images.multi_arm64.id
    assert pull(shim, ref, "runc-fast") == images.multi_amd64.id
    # two platforms: two entries; '' and runc-fast share a platform: one
    assert listed(shim) == sorted(
        [(images.multi_amd64.id, ""), (images.multi_arm64.id, "kata-arm64")]
    )
    assert status(shim, ref, "runc-fast").image.id == images.multi_amd64.id
    # each platform's blobs went to its own store
    amd_blobs = {p.name for p in (tmp_path / "amd" / "blobs" / "sha256").iterdir()}
    arm_blobs = {p.name for p in (tmp_path / "arm" / "blobs" / "sha256").iterdir()}
    assert images.multi_amd64.config.hex in amd_blobs - arm_blobs
    assert images.multi_arm64.config.hex in arm_blobs - amd_blobs


def test_removal_for_one_handler_leaves_the_others(
    crishim_server: Server, tmp_path: Path, registry: RegistryProcess, images: RegistryImages
) -> None:
    shim = crishim_server({"backends": pulling_backends(tmp_path, registry)})
    ref = f"{registry.host}/test/multi:1"
    pull(shim, ref)
    pull(shim, ref, "kata-arm64")
    remove(shim, ref, "kata-arm64")
    assert not status(shim, ref, "kata-arm64").HasField("image")
    assert status(shim, ref).image.id == images.multi_amd64.id
    assert listed(shim) == [(images.multi_amd64.id, "")]
    # removal by a handler sharing the platform removes it for both
    remove(shim, ref, "runc-fast")
    assert not status(shim, ref).HasField("image")
    assert listed(shim) == []


def test_an_unknown_handler_pulls_nothing(
    crishim_server: Server, tmp_path: Path, registry: RegistryProcess
) -> None:
    shim = crishim_server({"backends": pulling_backends(tmp_path, registry)})
    err = rpc_error(pull, shim, f"{registry.host}/test/multi:1", "gvisor")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'gvisor'" in (err.details() or "")
    for store in ("amd", "arm"):
        blobs = tmp_path / store / "blobs"
        assert not [p for p in blobs.rglob("*") if p.is_file()], store
    assert listed(shim) == []


# --------------------------------------------------------------------------- reaching plugins


def test_the_pull_request_carries_handler_and_user_specified_image() -> None:
    fake = fake_backend("fake") | {"runtime_handlers": ["", "kata"]}
    with upstream_server(fake) as (shim, recorder):
        assert recorder is not None
        pull(shim, "example.com/app:1", "kata", user_specified_image="app:1")
        pull(shim, "example.com/app:2")
        first, second = recorder.pulls
        assert (first.runtime_handler, first.user_specified_image) == ("kata", "app:1")
        assert (second.runtime_handler, second.user_specified_image) == ("", "")


def test_the_cri_backend_forwards_the_handler() -> None:
    upstream_fake = fake_backend("fake", images=[["example.com/app:1", ""]])
    with upstream_server(upstream_fake | {"runtime_handlers": ["", "kata"]}) as (up, recorder):
        assert recorder is not None
        front = {"backends": [cri_backend(endpoint_of(up)) | {"runtime_handlers": ["", "kata"]}]}
        with running_server(front, extra_plugins=FAKE_PLUGINS) as shim:
            image = status(shim, "example.com/app:1", "kata").image
            assert image.spec.runtime_handler == "kata"
            pull(shim, "example.com/app:2", "kata", user_specified_image="app:2")
            received = recorder.pulls[-1]
            assert (received.runtime_handler, received.user_specified_image) == ("kata", "app:2")
            remove(shim, "example.com/app:2", "kata")
            assert not status(shim, "example.com/app:2", "kata").HasField("image")
    # an upstream that does not serve the handler says so, and crishim passes it on
    with upstream_server(upstream_fake) as (up, _):
        front = {"backends": [cri_backend(endpoint_of(up)) | {"runtime_handlers": ["", "kata"]}]}
        with running_server(front, extra_plugins=FAKE_PLUGINS) as shim:
            err = rpc_error(status, shim, "example.com/app:1", "kata")
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "runtime handler 'kata' is not served" in (err.details() or "")
            assert status(shim, "example.com/app:1").image.spec.runtime_handler == ""


def test_no_default_handler_is_warned_about(
    layout: Layout, caplog: pytest.LogCaptureFixture
) -> None:
    vm = layout_backends(layout.path)[1]
    with caplog.at_level("WARNING"), running_server({"backends": [vm]}) as shim:
        err = rpc_error(status, shim, MULTI)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert status(shim, MULTI, "kata-arm64").image.id == layout.arm64.id
    assert any("no backend serves the default runtime handler" in r.message for r in caplog.records)


def test_routes_follow_the_backends_the_catalog_keeps(tmp_path: Path) -> None:
    """A backend left out after start-up (one that failed to start) leaves its routes too."""
    from crishim.catalog import BackendHandle, Catalog
    from crishim.errors import InvalidRequest
    from crishim.model import Platform
    from crishim.types import BackendContext, IndexedBackend

    def handle(name: str, handlers: tuple[str, ...]) -> BackendHandle:
        context = BackendContext(name, Platform("linux", "amd64"), tmp_path)
        return BackendHandle(name, "indexed", IndexedBackend(context), runtime_handlers=handlers)

    catalog = Catalog([handle("a", ("",)), handle("b", ("kata",))])
    assert catalog.runtime_handlers == ("", "kata")
    assert [h.name for h in catalog.route("kata").backends] == ["b"]
    catalog.backends = catalog.backends[:1]
    assert catalog.runtime_handlers == ("",)
    assert catalog.route("") is catalog
    with pytest.raises(InvalidRequest, match="runtime handler 'kata' is not served"):
        catalog.route("kata")
