"""What a CRI contract run is made of: the setup a backend author describes, the
images it must serve, and what the checks send and expect.

Part of the contract kit; import these from :mod:`crishim.testing.conformance`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from crishim.cri.runtime.v1 import api_pb2
from crishim.model import split_user
from crishim.testing.server import RunningShim

__all__ = [
    "BAD_REFERENCES",
    "RECENT_NS",
    "ContractRun",
    "ContractSetup",
    "ExpectedImage",
]

#: Image references the CRI must reject with INVALID_ARGUMENT.
BAD_REFERENCES: tuple[str, ...] = (
    "Busybox",
    "library/BusyBox:1",
    "busybox@sha256:abc",
    "busybox@sha256:" + "A" * 64,
    "busybox@md5:" + "a" * 32,
    "sha256:" + "G" * 64,
    "busybox:",
    "busybox:" + "t" * 129,
    "a" * 5000,
    "exa mple.com/app:1",
)

#: How far from now an ImageFsInfo timestamp may be: generous for a usage
#: computed at start-up, tight enough to catch seconds, milliseconds or
#: microseconds given where nanoseconds are due, and a zero.
RECENT_NS = 3600 * 10**9

#: An image ID and names no contract setup may serve (the nil checks ask for them).
ABSENT_ID = "sha256:" + "0" * 63 + "1"
ABSENT_NAMES: tuple[str, ...] = (
    "crishim-contract.invalid/absent:never",
    "crishim-contract.invalid/absent@sha256:" + "0" * 63 + "1",
    ABSENT_ID,
    ABSENT_ID.removeprefix("sha256:"),
)


@dataclass(frozen=True)
class ExpectedImage:
    """One image the backend serves, as the CRI must report it.

    Example::

        from crishim.testing.ocibuild import LayoutBuilder

        builder = LayoutBuilder(root / "store")
        app = builder.image(user="1000", name="app")
        expected = ExpectedImage(
            id=app.id,
            repo_tags=["example.com/app:1.0"],  # normalised, as the CRI reports them
            repo_digests=[f"example.com/app@{app.manifest.digest}"],
            user="1000",
            size=app.size,  # crishim's rule: manifest + config + layers
        )
    """

    #: ``sha256:<hex>`` (the config digest).
    id: str
    #: Normalised ``name:tag`` strings (``docker.io/library/busybox:latest``).
    repo_tags: Sequence[str] = ()
    #: Normalised ``name@digest`` strings.
    repo_digests: Sequence[str] = ()
    #: The image config's ``User``; uid/username are derived from it.
    user: str = ""
    #: The size the backend documents for the image (required: the kit
    #: fails an image without one). crishim's rule, which the built-in
    #: backends follow: the compressed sizes of the platform manifest, its
    #: config and its layers (:attr:`crishim.testing.ocibuild.BuiltImage.size`).
    size: int | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return (*self.repo_tags, *self.repo_digests)


@dataclass(frozen=True)
class ContractSetup:
    """What ``cri_setup`` returns: the config and what it must serve.

    Example::

        ContractSetup(
            backends=[{"name": "c", "type": "json-catalog", "options": {"catalog": "c.json"}}],
            images=[ExpectedImage(id=app_id, repo_tags=["example.com/app:1.0"], size=1234)],
            hidden=["example.com/embedded/app:1.0"],
            config={"platform": {"os": "linux", "architecture": "amd64"}},
            base_dir=root,
        )
    """

    #: The ``backends`` list of the config.
    backends: Sequence[Mapping[str, Any]]
    #: Every image served, each once.
    images: Sequence[ExpectedImage]
    #: References the backend holds but the CRI must never see (ImageStatus
    #: nil, never listed, removal a no-op), e.g. embedded images.
    hidden: Sequence[str] = ()
    #: Other top-level config keys (``platform``, ``filters``, ``pinned``...).
    config: Mapping[str, Any] = field(default_factory=dict)
    #: Plugins to register next to the installed ones (a plugin under test
    #: that is not installed): (name, module or object) pairs.
    extra_plugins: Sequence[tuple[str, object]] = ()
    #: Where relative paths in options resolve (default: the current directory).
    base_dir: Path | None = None


@dataclass(frozen=True)
class ContractRun:
    """A server started for a setup: what the kit's fixtures give each check.

    Example::

        class TestMine(CriContract):
            def cri_setup(self, root): ...

            def test_my_own_check(self, cri_contract):  # the class's shared server
                for expected in cri_contract.setup.images:
                    assert cri_contract.shim.status(expected.id).HasField("image")
    """

    setup: ContractSetup
    shim: RunningShim


def wire_bytes(image: api_pb2.Image) -> bytes:
    """An ``Image`` as bytes, for comparing two answers whole."""
    return image.SerializeToString(deterministic=True)


def status_code(call: Any, *args: Any) -> grpc.StatusCode:
    """The status ``call(*args)`` answers (OK when it raises nothing)."""
    try:
        call(*args)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def recent(timestamp_ns: int, now_ns: int) -> bool:
    """Whether an ImageFsInfo timestamp is within :data:`RECENT_NS` of now."""
    return abs(now_ns - timestamp_ns) <= RECENT_NS


#: The CRI's (uid, username) for a config's ``User`` (the group is never
#: reported): the rule the servicer applies, :func:`crishim.model.split_user`.
expected_user = split_user
