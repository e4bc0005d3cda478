"""ListImages, ImageFsInfo, health, concurrency, PullImage/RemoveImage and a
crictl-like client in a separate process, all over the real unix socket."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import (
    ABSENT_ID,
    STANDARD_TAGS,
    StandardImages,
    backend,
    build_standard_layout,
    hexid,
    image_bytes,
    make_config,
    rpc_error,
    standard_digests,
)
from grpc_health.v1 import health_pb2

from crishim.cri.runtime.v1 import api_pb2
from crishim.reference import MIN_ID_PREFIX
from crishim.testing.server import RunningShim

Server = Callable[..., RunningShim]

# --------------------------------------------------------------------------- ListImages


def test_list_has_one_entry_per_image_with_all_names(
    std_shim: RunningShim, std: StandardImages
) -> None:
    images = std_shim.list()
    ids = [image.id for image in images]
    assert len(ids) == len(set(ids))
    served = std.served()
    assert set(ids) == {built.id for built in served.values()}
    by_id = {image.id: image for image in images}
    digests = standard_digests(std)
    for key, built in served.items():
        image = by_id[built.id]
        assert sorted(image.repo_tags) == sorted(STANDARD_TAGS[key]), key
        assert sorted(image.repo_digests) == sorted(digests[key]), key
        assert image.size == built.size, key
        assert image.spec.image == built.id
        assert image_bytes(image) == image_bytes(std_shim.status(built.id).image), key


def test_list_with_empty_filter_lists_everything(
    std_shim: RunningShim, std: StandardImages
) -> None:
    """crictl sends a filter holding an empty ImageSpec: that is no filter."""
    everything = {image.id for image in std_shim.list()}
    for request in (
        api_pb2.ListImagesRequest(),
        api_pb2.ListImagesRequest(filter=api_pb2.ImageFilter()),
        api_pb2.ListImagesRequest(filter=api_pb2.ImageFilter(image=api_pb2.ImageSpec(image=""))),
    ):
        response = std_shim.images.ListImages(request, timeout=10)
        assert {image.id for image in response.images} == everything
    assert len(everything) == len(std.served())


def _filtered(shim: RunningShim, ref: str) -> list[api_pb2.Image]:
    request = api_pb2.ListImagesRequest(
        filter=api_pb2.ImageFilter(image=api_pb2.ImageSpec(image=ref))
    )
    return list(shim.images.ListImages(request, timeout=10).images)


@pytest.mark.parametrize(
    ("key", "ref"),
    [
        ("busybox", lambda s: "busybox"),
        ("busybox", lambda s: "docker.io/library/busybox:1.36"),
        ("busybox", lambda s: s.busybox.id),
        ("busybox", lambda s: hexid(s.busybox.id)[:MIN_ID_PREFIX]),
        ("busybox", lambda s: "busybox@" + s.busybox.manifest.digest),
        ("app", lambda s: "user/app"),
        ("registry", lambda s: "localhost:5000/app:v1"),
        ("nameless", lambda s: s.nameless.id),
        ("multi", lambda s: "example.com/multi:1"),
    ],
    ids=[
        "short-name",
        "qualified-tag",
        "id",
        "id-prefix",
        "digest",
        "user-repo",
        "host-port",
        "nameless-id",
        "index",
    ],
)
def test_list_filter_returns_just_that_image(
    std_shim: RunningShim, std: StandardImages, key: str, ref: Callable[[StandardImages], str]
) -> None:
    images = _filtered(std_shim, ref(std))
    assert [image.id for image in images] == [std.served()[key].id]
    assert image_bytes(images[0]) == image_bytes(std_shim.status(ref(std)).image)


@pytest.mark.parametrize(
    "ref", ["example.com/nothing:1", "busybox:nope", ABSENT_ID, "0" * MIN_ID_PREFIX]
)
def test_list_filter_absent_is_empty(std_shim: RunningShim, ref: str) -> None:
    assert _filtered(std_shim, ref) == []


@pytest.mark.parametrize(
    ("ref", "problem"),
    [("Busybox", "lowercase"), ("busybox@sha256:abc", "digest"), ("a" * 5000, "limit")],
    ids=["uppercase", "bad-digest", "too-long"],
)
def test_list_filter_bad_is_invalid_argument(std_shim: RunningShim, ref: str, problem: str) -> None:
    err = rpc_error(_filtered, std_shim, ref)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert problem in err.details()


# --------------------------------------------------------------------------- ImageFsInfo


def test_image_fs_info(crishim_server: Server, tmp_path: Path) -> None:
    std = build_standard_layout(tmp_path / "layout")
    shim = crishim_server(make_config(backend("std", std.path)))
    before = time.time_ns()
    response = shim.fsinfo()
    after = time.time_ns()
    (fs,) = response.image_filesystems
    assert fs.used_bytes.value > 0
    assert fs.inodes_used.value > 0
    files = list(std.path.rglob("*"))
    assert fs.inodes_used.value >= len(files)
    mountpoint = fs.fs_id.mountpoint
    assert os.path.isdir(mountpoint)
    assert os.path.ismount(mountpoint)
    assert std.path.resolve().is_relative_to(Path(mountpoint).resolve())
    assert abs(fs.timestamp - before) < 5_000_000_000
    assert fs.timestamp <= after + 1_000_000_000
    assert len(response.container_filesystems) == 0


def test_image_fs_info_two_backends_on_one_filesystem(
    crishim_server: Server, tmp_path: Path
) -> None:
    one = build_standard_layout(tmp_path / "one")
    two = build_standard_layout(tmp_path / "two")
    (a,) = crishim_server(make_config(backend("a", one.path))).fsinfo().image_filesystems
    (b,) = crishim_server(make_config(backend("b", two.path))).fsinfo().image_filesystems
    both = crishim_server(make_config(backend("a", one.path), backend("b", two.path)))
    (fs,) = both.fsinfo().image_filesystems
    assert fs.fs_id.mountpoint == a.fs_id.mountpoint == b.fs_id.mountpoint
    assert fs.used_bytes.value == a.used_bytes.value + b.used_bytes.value
    assert fs.inodes_used.value == a.inodes_used.value + b.inodes_used.value


# --------------------------------------------------------------------------- health


@pytest.mark.parametrize("service", ["", "runtime.v1.ImageService"], ids=["overall", "image"])
def test_health_serving(std_shim: RunningShim, service: str) -> None:
    response = std_shim.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_health_unknown_service_is_not_found(std_shim: RunningShim) -> None:
    err = rpc_error(
        std_shim.health.Check, health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND


# --------------------------------------------------------------------------- concurrency


def test_concurrent_image_status(std_shim: RunningShim, std: StandardImages) -> None:
    cases: list[tuple[str, str | None]] = []
    for key, built in std.served().items():
        cases.append((built.id, built.id))
        cases.append((hexid(built.id)[:MIN_ID_PREFIX], built.id))
        cases.extend((tag, built.id) for tag in STANDARD_TAGS[key])
        cases.extend((digest, built.id) for digest in standard_digests(std)[key])
    cases += [
        ("busybox", std.busybox.id),
        ("user/app", std.app.id),
        ("example.com/nothing:1", None),
        ("busybox:nope", None),
        (ABSENT_ID, None),
        ("0" * MIN_ID_PREFIX, None),
    ]
    calls = [cases[i % len(cases)] for i in range(320)]

    def call(case: tuple[str, str | None]) -> tuple[str, str | None, str | None]:
        ref, expected = case
        response = std_shim.status(ref, verbose=bool(len(ref) % 2))
        got = response.image.id if response.HasField("image") else None
        return ref, expected, got

    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(call, calls))
    assert len(results) == 320
    wrong = [(ref, expected, got) for ref, expected, got in results if expected != got]
    assert wrong == []
    assert sum(1 for _, expected, _ in results if expected is None) > 0


# --------------------------------------------------------------------------- PullImage


def _pull(shim: RunningShim, ref: str) -> api_pb2.PullImageResponse:
    request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref))
    return shim.images.PullImage(request, timeout=10)


@pytest.mark.parametrize(
    ("key", "ref"),
    [
        ("busybox", lambda s: "busybox"),
        ("busybox", lambda s: "busybox:1.36"),
        ("busybox", lambda s: s.busybox.id),
        ("busybox", lambda s: "busybox@" + s.busybox.manifest.digest),
        ("registry", lambda s: "localhost:5000/app:v1"),
        ("multi", lambda s: "example.com/multi:1"),
    ],
    ids=["name", "tag", "id", "digest", "host-port", "index"],
)
def test_pull_present_returns_its_id(
    std_shim: RunningShim, std: StandardImages, key: str, ref: Callable[[StandardImages], str]
) -> None:
    assert _pull(std_shim, ref(std)).image_ref == std.served()[key].id


@pytest.mark.parametrize("ref", ["example.com/nothing:1", "busybox:nope", ABSENT_ID])
def test_pull_absent_is_failed_precondition(std_shim: RunningShim, ref: str) -> None:
    err = rpc_error(_pull, std_shim, ref)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.details()


@pytest.mark.parametrize(
    "ref", ["", "Busybox", "busybox@sha256:abc"], ids=["empty", "upper", "digest"]
)
def test_pull_bad_is_invalid_argument(std_shim: RunningShim, ref: str) -> None:
    assert rpc_error(_pull, std_shim, ref).code() == grpc.StatusCode.INVALID_ARGUMENT


# --------------------------------------------------------------------------- RemoveImage


@pytest.mark.parametrize("ref", ["busybox", "busybox:1.36", "id"])
def test_remove_present_from_read_only_is_failed_precondition(
    crishim_server: Server, tmp_path: Path, ref: str
) -> None:
    options = {"read_only": True}
    # a private layout: should the backend remove after all, no other test is affected
    std = build_standard_layout(tmp_path / "layout")
    before = sorted(p.relative_to(std.path).as_posix() for p in std.path.rglob("*"))
    shim = crishim_server(make_config(backend("std", std.path, **options)))
    text = std.busybox.id if ref == "id" else ref
    err = rpc_error(shim.remove, text)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.details()
    # nothing was removed
    image = shim.status("busybox:1.36").image
    assert image.id == std.busybox.id
    assert sorted(image.repo_tags) == sorted(STANDARD_TAGS["busybox"])
    assert std.busybox.id in {i.id for i in shim.list()}
    # and nothing in the layout was touched
    assert "docker.io/library/busybox:1.36" in (std.path / "index.json").read_text()
    after = sorted(p.relative_to(std.path).as_posix() for p in std.path.rglob("*"))
    assert set(before) <= set(after)


@pytest.mark.parametrize("ref", ["example.com/nothing:1", "busybox:nope", ABSENT_ID, "0" * 12])
def test_remove_absent_is_ok(std_shim: RunningShim, ref: str) -> None:
    assert isinstance(std_shim.remove(ref), api_pb2.RemoveImageResponse)


@pytest.mark.parametrize(
    "ref", ["", "Busybox", "busybox@sha256:abc"], ids=["empty", "upper", "digest"]
)
def test_remove_bad_is_invalid_argument(std_shim: RunningShim, ref: str) -> None:
    assert rpc_error(std_shim.remove, ref).code() == grpc.StatusCode.INVALID_ARGUMENT


# --------------------------------------------------------------------------- separate process

CLIENT = textwrap.dedent(
    '''
    """A crictl-like client: ImageFsInfo first, then ListImages or ImageStatus."""
    import json
    import sys

    import grpc

    from crishim.cri.runtime.v1 import api_pb2, api_pb2_grpc


    def image_json(image):
        return {
            "id": image.id,
            "repo_tags": list(image.repo_tags),
            "repo_digests": list(image.repo_digests),
            "size": image.size,
            "uid": image.uid.value if image.HasField("uid") else None,
            "username": image.username,
        }


    def main():
        socket_path, command = sys.argv[1], sys.argv[2]
        channel = grpc.insecure_channel("unix:" + socket_path)
        stub = api_pb2_grpc.ImageServiceStub(channel)
        fs = stub.ImageFsInfo(api_pb2.ImageFsInfoRequest(), timeout=10)
        out = {
            "filesystems": [
                {"mountpoint": f.fs_id.mountpoint, "used_bytes": f.used_bytes.value}
                for f in fs.image_filesystems
            ]
        }
        if command == "images":
            request = api_pb2.ListImagesRequest(
                filter=api_pb2.ImageFilter(image=api_pb2.ImageSpec(image=""))
            )
            response = stub.ListImages(request, timeout=10)
            out["images"] = [image_json(i) for i in response.images]
        else:
            request = api_pb2.ImageStatusRequest(
                image=api_pb2.ImageSpec(image=sys.argv[3]), verbose=True
            )
            response = stub.ImageStatus(request, timeout=10)
            out["image"] = image_json(response.image) if response.HasField("image") else None
            out["info"] = dict(response.info)
        channel.close()
        print(json.dumps(out))


    main()
    '''
)


def _run_client(tmp_path: Path, shim: RunningShim, *args: str) -> dict[str, Any]:
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    proc = subprocess.run(
        [sys.executable, str(script), str(shim.socket_path), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert isinstance(result, dict)
    (fs,) = result["filesystems"]
    assert fs["used_bytes"] > 0
    assert os.path.ismount(fs["mountpoint"])
    return result


def test_separate_process_fsinfo_then_list(
    std_shim: RunningShim, std: StandardImages, tmp_path: Path
) -> None:
    out = _run_client(tmp_path, std_shim, "images")
    by_id = {image["id"]: image for image in out["images"]}
    assert len(by_id) == len(out["images"]) == len(std.served())
    for key, built in std.served().items():
        assert sorted(by_id[built.id]["repo_tags"]) == sorted(STANDARD_TAGS[key])
        assert by_id[built.id]["size"] == built.size
    assert by_id[std.app.id]["uid"] == 1002
    assert by_id[std.web.id]["username"] == "www-data"


def test_separate_process_fsinfo_then_status(
    std_shim: RunningShim, std: StandardImages, tmp_path: Path
) -> None:
    out = _run_client(tmp_path, std_shim, "inspecti", "localhost:5000/app:v1")
    assert out["image"]["id"] == std.registry.id
    assert out["image"]["repo_tags"] == ["localhost:5000/app:v1"]
    assert out["image"]["uid"] == 1003
    info = json.loads(out["info"]["info"])
    assert info["imageSpec"] == std.registry.config_json
    assert info["backend"] == "std"

    absent = _run_client(tmp_path, std_shim, "inspecti", "example.com/nothing:1")
    assert absent["image"] is None
