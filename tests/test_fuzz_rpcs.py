"""Property-based fuzzing of every ImageService call, through the real socket.

Whatever a client sends (any text where references go, any annotations,
auth fields holding secrets, verbose or not, filters, raw bytes that are no
message at all) the server answers OK or a clear status from the list
below, never INTERNAL or UNKNOWN, never repeats a secret it was sent, and
keeps serving. The server's backends: an oci-dir layout, and a
registry-cache whose only registry endpoint refuses connections, so pulls
go as far as the network without leaving the machine.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crishim.cri.runtime.v1 import api_pb2
from crishim.testing.ocibuild import LayoutBuilder
from crishim.testing.server import RunningShim, running_server

#: What a bad request may be answered with.
CLEAR = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
SECRET = "fuzz-secret-7c1e9a"
NAME = "fuzz.example/app:1"

EXAMPLES = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningShim]:
    b = LayoutBuilder(tmp_path_factory.mktemp("fuzz") / "layout")
    image = b.image(name="fuzz", user="1000")
    b.tag(image, NAME)
    b.write()
    unreachable = {"endpoints": [{"url": "http://127.0.0.1:9", "plain_http": True}]}
    config = {
        "backends": [
            {"name": "layout", "type": "oci-dir", "options": {"path": str(b.root)}},
            {
                "name": "cache",
                "type": "registry-cache",
                "options": {
                    "path": str(tmp_path_factory.mktemp("fuzz-store")),
                    "trust_env": False,
                    "connect_timeout": 1,
                    "registries": {"docker.io": unreachable, "fuzz.example": unreachable},
                },
            },
        ]
    }
    with running_server(config) as running:
        yield running


def _code(call: object, request: object) -> tuple[grpc.StatusCode, str]:
    try:
        response = call(request, timeout=30)  # type: ignore[operator]
        if hasattr(response, "__iter__") and not hasattr(response, "ListFields"):
            list(response)  # a stream: drain it
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def _check(shim: RunningShim, code: grpc.StatusCode, details: str) -> None:
    assert code in CLEAR, (code, details)
    assert SECRET not in details
    health = shim.health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING


references = st.one_of(
    st.text(max_size=300),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789.-_/:@", max_size=300),
    st.sampled_from(["", NAME, "sha256:", "a" * 64, "fuzz.example/app@sha256:" + "0" * 64]),
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
)
annotations = st.dictionaries(st.text(max_size=50), st.text(max_size=200), max_size=5)


def _spec(image: str, annotated: dict[str, str], handler: str = "") -> api_pb2.ImageSpec:
    return api_pb2.ImageSpec(image=image, annotations=annotated, runtime_handler=handler)


@EXAMPLES
@given(image=references, verbose=st.booleans(), annotated=annotations, handler=st.text(max_size=30))
def test_image_status(
    shim: RunningShim, image: str, verbose: bool, annotated: dict[str, str], handler: str
) -> None:
    request = api_pb2.ImageStatusRequest(image=_spec(image, annotated, handler), verbose=verbose)
    _check(shim, *_code(shim.images.ImageStatus, request))


@EXAMPLES
@given(image=references, use_filter=st.booleans(), stream=st.booleans())
def test_list_and_stream(shim: RunningShim, image: str, use_filter: bool, stream: bool) -> None:
    if stream:
        request: object = api_pb2.StreamImagesRequest()
        if use_filter:
            request.filter.image.image = image  # type: ignore[attr-defined]
        _check(shim, *_code(shim.images.StreamImages, request))
    else:
        request = api_pb2.ListImagesRequest()
        if use_filter:
            request.filter.image.image = image  # type: ignore[attr-defined]
        _check(shim, *_code(shim.images.ListImages, request))


@EXAMPLES
@given(image=references)
def test_remove(shim: RunningShim, image: str) -> None:
    if image == NAME or image.startswith("sha256:") or image == "a" * 64:
        image = "fuzz.example/other:1"  # keep the one served image
    request = api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=image))
    _check(shim, *_code(shim.images.RemoveImage, request))


auths = st.builds(
    api_pb2.AuthConfig,
    username=st.sampled_from(["", "user", SECRET, "a:b", "ü\n"]),
    password=st.sampled_from(["", SECRET, SECRET + "\n", "p w"]),
    auth=st.sampled_from(["", SECRET, "%%%", "dXNlcjpwYXNz"]),
    server_address=st.sampled_from(["", "docker.io", "fuzz.example", "elsewhere.example"]),
    identity_token=st.sampled_from(["", SECRET, SECRET + "\n", "to ken", "tök" + SECRET]),
    registry_token=st.sampled_from(["", SECRET, SECRET + " ", "t\nk" + SECRET, "tök" + SECRET]),
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(image=references, auth=st.none() | auths, annotated=annotations)
def test_pull(
    shim: RunningShim, image: str, auth: api_pb2.AuthConfig | None, annotated: dict[str, str]
) -> None:
    request = api_pb2.PullImageRequest(image=_spec(image, annotated), auth=auth)
    _check(shim, *_code(shim.images.PullImage, request))


METHODS = ["ImageStatus", "ListImages", "StreamImages", "PullImage", "RemoveImage", "ImageFsInfo"]


@EXAMPLES
@given(method=st.sampled_from(METHODS), data=st.binary(max_size=300))
def test_raw_bytes(shim: RunningShim, method: str, data: bytes) -> None:
    path = f"/runtime.v1.ImageService/{method}"
    if method == "StreamImages":
        call: object = shim.channel.unary_stream(path)
    else:
        call = shim.channel.unary_unary(path)
    code, details = _code(call, data)
    _check(shim, code, details)


def test_raw_garbage_is_invalid_argument_not_internal(shim: RunningShim) -> None:
    call = shim.channel.unary_unary("/runtime.v1.ImageService/ImageStatus")
    code, details = _code(call, b"\xff\xff\xff\xff")
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "runtime.v1.ImageStatusRequest" in details


def test_the_served_image_survived_the_fuzzing(shim: RunningShim, tmp_path: Path) -> None:
    assert shim.status(NAME).image.repo_tags == [NAME]
