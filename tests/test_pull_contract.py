"""The pulling contract as docs/plugins.md states it, over gRPC.

How the catalog recognises a pulling backend (a ``pull_image`` method),
that the first one configured is the only one asked, what each error a
pull raises becomes, and what PullImage does when nothing pulls.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

import grpc
import pytest

from crishim import errors, hookimpl
from crishim.cri.runtime.v1 import api_pb2
from crishim.model import ImageRecord
from crishim.testing.ocibuild import LayoutBuilder
from crishim.testing.server import RunningShim, running_server
from crishim.types import (
    BackendContext,
    BackendOptions,
    BackendType,
    IndexedBackend,
    Puller,
    PullRequest,
)

PULLED = ImageRecord(id="sha256:" + "cd" * 32, repo_tags=("example.com/pulled:1",), size=10)


class Recorder(IndexedBackend):
    """A pulling backend that records its pulls and raises what its options say."""

    calls: ClassVar[list[tuple[str, str]]] = []

    def __init__(self, context: BackendContext, options: Any) -> None:
        super().__init__(context)
        self.raises: str = getattr(options, "raises", "")

    def pull_image(self, request: PullRequest) -> ImageRecord:
        Recorder.calls.append((self.name, str(request.ref)))
        if self.raises == "RuntimeError":
            raise RuntimeError("a fault with a secret: hunter2")
        if self.raises:
            raise getattr(errors, self.raises)(f"{self.name} refused {request.ref}")
        self.publish([PULLED])
        return PULLED


class NotAPuller(IndexedBackend):
    """No pull_image: never asked to pull."""

    def __init__(self, context: BackendContext, options: Any) -> None:
        super().__init__(context)


class RecorderOptions(BackendOptions):
    raises: str = ""


class Plugin:
    @hookimpl
    def crishim_backend_types(self) -> list[BackendType]:
        return [
            BackendType("recorder", Recorder, RecorderOptions),
            BackendType("not-a-puller", NotAPuller),
        ]


def _serve(*backends: dict[str, Any], layout: Path | None = None) -> Any:
    entries = list(backends)
    if layout is not None:
        entries.append({"name": "layout", "type": "oci-dir", "options": {"path": str(layout)}})
    return running_server(
        {"backends": entries, "platform": {"os": "linux", "architecture": "amd64"}},
        extra_plugins=[("pull-contract", Plugin())],
    )


def _pull(shim: RunningShim, ref: str) -> api_pb2.PullImageResponse:
    request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref))
    response: api_pb2.PullImageResponse = shim.images.PullImage(request, timeout=30)
    return response


def _pull_error(shim: RunningShim, ref: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        _pull(shim, ref)
    return info.value


def test_a_backend_pulls_when_it_has_pull_image_and_the_first_one_is_asked() -> None:
    assert issubclass(Recorder, Puller) and not issubclass(NotAPuller, Puller)
    Recorder.calls.clear()
    with _serve(
        {"name": "reader", "type": "not-a-puller"},
        {"name": "first", "type": "recorder"},
        {"name": "second", "type": "recorder"},
    ) as shim:
        assert _pull(shim, "example.com/pulled:1").image_ref == PULLED.id
        assert shim.status("example.com/pulled:1").image.id == PULLED.id
    assert Recorder.calls == [("first", "example.com/pulled:1")]


@pytest.mark.parametrize(
    ("raises", "code"),
    [
        ("ImageNotFound", grpc.StatusCode.NOT_FOUND),
        ("Unauthenticated", grpc.StatusCode.UNAUTHENTICATED),
        ("PermissionDenied", grpc.StatusCode.PERMISSION_DENIED),
        ("Unavailable", grpc.StatusCode.UNAVAILABLE),
        ("DeadlineExceeded", grpc.StatusCode.DEADLINE_EXCEEDED),
        ("Cancelled", grpc.StatusCode.CANCELLED),
        ("DataLoss", grpc.StatusCode.DATA_LOSS),
        ("InvalidRequest", grpc.StatusCode.INVALID_ARGUMENT),
        ("NotSupported", grpc.StatusCode.FAILED_PRECONDITION),
        ("ReadOnly", grpc.StatusCode.FAILED_PRECONDITION),
        ("TooLarge", grpc.StatusCode.RESOURCE_EXHAUSTED),
    ],
)
def test_what_the_pulling_backend_raises_is_the_answer_and_nobody_else_is_asked(
    raises: str, code: grpc.StatusCode
) -> None:
    Recorder.calls.clear()
    with _serve(
        {"name": "first", "type": "recorder", "options": {"raises": raises}},
        {"name": "second", "type": "recorder"},
    ) as shim:
        error = _pull_error(shim, "example.com/pulled:1")
    assert error.code() is code
    assert error.details() == "first refused example.com/pulled:1"
    assert Recorder.calls == [("first", "example.com/pulled:1")]  # not passed on


def test_a_fault_in_a_pull_is_internal_without_details_and_the_server_serves_on(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    layout = LayoutBuilder(tmp_path / "layout")
    layout.tag(layout.image(name="held"), "example.com/held:1")
    layout.write()
    with (
        caplog.at_level(logging.ERROR, logger="crishim.service"),
        _serve(
            {"name": "first", "type": "recorder", "options": {"raises": "RuntimeError"}},
            layout=layout.root,
        ) as shim,
    ):
        error = _pull_error(shim, "example.com/pulled:1")
        assert error.code() is grpc.StatusCode.INTERNAL
        assert error.details() == "PullImage: internal error (see the server log)"
        assert shim.status("example.com/held:1").HasField("image")
    assert "hunter2" not in (error.details() or "")  # a fault's message stays in the log
    (logged,) = [r for r in caplog.records if r.getMessage() == "PullImage failed"]
    assert logged.exc_info is not None and "hunter2" in str(logged.exc_info[1])


def test_with_no_pulling_backend_a_held_image_is_its_own_pull(tmp_path: Path) -> None:
    layout = LayoutBuilder(tmp_path / "layout")
    held = layout.image(name="held")
    layout.tag(held, "example.com/held:1")
    layout.write()
    with _serve(layout=layout.root) as shim:
        assert _pull(shim, "example.com/held:1").image_ref == held.id
        error = _pull_error(shim, "example.com/absent:1")
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "no configured backend pulls images (backends: layout)" in (error.details() or "")
