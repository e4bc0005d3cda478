"""Shared helpers for the end-to-end tests of the CRI image service.

Every test here talks to a real crishim server over a unix socket with the
generated client stubs (see :mod:`crishim.testing.server`). The standard
layout built by :func:`build_standard_layout` holds images with known
names, users, annotations and platforms; its :class:`StandardImages` keeps
the :class:`~crishim.testing.ocibuild.BuiltImage` objects so tests can
compare what the server says with what was written.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import settings
from hypothesis.configuration import set_hypothesis_home_dir

from crishim.cri.runtime.v1 import api_pb2
from crishim.testing.ocibuild import BuiltImage, BuiltIndex, LayoutBuilder
from crishim.testing.server import RunningShim, running_server, short_tempdir

# Tests write only under their own temporary directories: no example database,
# and Hypothesis's own files in a temporary directory, not the working one.
settings.register_profile("crishim", database=None)
settings.load_profile("crishim")
_HYPOTHESIS_HOME = tempfile.mkdtemp(prefix="crishim-hypothesis-")
set_hypothesis_home_dir(_HYPOTHESIS_HOME)
atexit.register(shutil.rmtree, _HYPOTHESIS_HOME, True)

#: The platform every test server resolves image indexes to (independent of the host).
PLATFORM: dict[str, str] = {"os": "linux", "architecture": "arm64", "variant": "v8"}

#: The ``pinned`` list of the standard server: an exact name given in short form,
#: an exact name whose tag no image has (must pin nothing) and a prefix pattern.
STANDARD_PINNED: list[str] = ["user/app", "busybox:9.9", "localhost:5000/*"]

ABSENT_ID = "sha256:" + "0" * 64

#: The committed demo layout the README serves (examples/layouts/demo).
DEMO_LAYOUT = Path(__file__).resolve().parents[1] / "examples" / "layouts" / "demo"
#: An ``oci-dir`` backend ``demo`` over it, its images named as the README's.
DEMO_BACKEND: dict[str, Any] = {
    "name": "demo",
    "type": "oci-dir",
    "options": {"path": str(DEMO_LAYOUT), "repository": "example.com/crishim/hello"},
}


def backend(name: str, path: Path | str, **options: Any) -> dict[str, Any]:
    """One ``oci-dir`` entry of the ``backends`` list."""
    return {"name": name, "type": "oci-dir", "options": {"path": str(path), **options}}


def make_config(
    *backends: Mapping[str, Any],
    pinned: Sequence[str] = (),
    platform: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A crishim config mapping over ``backends`` (platform: linux/arm64/v8 by default)."""
    return {
        "backends": [dict(b) for b in backends],
        "pinned": list(pinned),
        "platform": dict(platform if platform is not None else PLATFORM),
    }


def hexid(image_id: str) -> str:
    """The 64 hex characters of ``sha256:<hex>``."""
    assert image_id.startswith("sha256:"), image_id
    return image_id.removeprefix("sha256:")


def rpc_error(call: Any, *args: Any, **kwargs: Any) -> grpc.RpcError:
    """Call ``call`` and return the grpc.RpcError it raises (fail if it succeeds)."""
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    return info.value


def image_bytes(image: api_pb2.Image) -> bytes:
    return image.SerializeToString(deterministic=True)


@dataclass(frozen=True)
class StandardImages:
    """What :func:`build_standard_layout` wrote."""

    path: Path
    #: ``busybox`` and ``busybox:1.36`` (the docker.io/library official image), no User.
    busybox: BuiltImage
    #: ``user/app`` (docker.io/user/app:latest), User "1002", manifest annotations.
    app: BuiltImage
    #: ``localhost:5000/app:v1``, User "1003:1004".
    registry: BuiltImage
    #: ``example.com/web:1``, User "www-data".
    web: BuiltImage
    #: ``example.com/web-group:1``, User "www-data:1004".
    web_group: BuiltImage
    #: No name annotation at all: served by ID only.
    nameless: BuiltImage
    #: ``example.com/multi:1``: an index over amd64, arm64/v8 and arm/v7.
    multi: BuiltIndex
    multi_amd64: BuiltImage
    multi_arm64: BuiltImage
    multi_arm: BuiltImage

    @property
    def singles(self) -> dict[str, BuiltImage]:
        """The images whose ``index.json`` entry is a manifest, by attribute name."""
        return {
            "busybox": self.busybox,
            "app": self.app,
            "registry": self.registry,
            "web": self.web,
            "web_group": self.web_group,
            "nameless": self.nameless,
        }

    def served(self) -> dict[str, BuiltImage]:
        """Every image the server must list (the multi index resolved to arm64/v8)."""
        return {**self.singles, "multi": self.multi_arm64}


APP_ANNOTATIONS = {
    "org.opencontainers.image.title": "app",
    "org.opencontainers.image.version": "2.0",
}

#: Normalised repo_tags of every standard image, by attribute name.
STANDARD_TAGS: dict[str, list[str]] = {
    "busybox": ["docker.io/library/busybox:latest", "docker.io/library/busybox:1.36"],
    "app": ["docker.io/user/app:latest"],
    "registry": ["localhost:5000/app:v1"],
    "web": ["example.com/web:1"],
    "web_group": ["example.com/web-group:1"],
    "nameless": [],
    "multi": ["example.com/multi:1"],
}

#: The repository of every standard image's names, by attribute name.
STANDARD_REPOS: dict[str, list[str]] = {
    "busybox": ["docker.io/library/busybox"],
    "app": ["docker.io/user/app"],
    "registry": ["localhost:5000/app"],
    "web": ["example.com/web"],
    "web_group": ["example.com/web-group"],
    "nameless": [],
    "multi": ["example.com/multi"],
}


def build_standard_layout(root: Path) -> StandardImages:
    """Write the standard test layout under ``root`` and describe it."""
    b = LayoutBuilder(root)
    busybox = b.image(name="busybox", files={"bin/busybox": "#!busybox\n", "etc/motd": "hi\n"})
    b.tag(busybox, "busybox")
    b.tag(busybox, "docker.io/library/busybox:1.36")
    app = b.image(
        name="app",
        user="1002",
        layers=[{"app/bin": "app\n"}, {"app/data/x": "x" * 300}],
        annotations=APP_ANNOTATIONS,
    )
    b.tag(app, "user/app")
    registry = b.image(name="registry", user="1003:1004")
    b.tag(registry, "localhost:5000/app:v1")
    web = b.image(name="web", user="www-data")
    b.tag(web, "example.com/web:1")
    web_group = b.image(name="web-group", user="www-data:1004")
    b.tag(web_group, "example.com/web-group:1")
    nameless = b.image(name="nameless")
    b.add_raw_entry(nameless.manifest.to_json())
    multi_amd64 = b.image(name="multi", architecture="amd64", files={"m": "amd64\n"})
    multi_arm64 = b.image(
        name="multi",
        architecture="arm64",
        variant="v8",
        layers=[{"m": "arm64\n"}, {"extra": "arm64 only\n" * 20}],
    )
    multi_arm = b.image(name="multi", architecture="arm", variant="v7", files={"m": "arm\n"})
    multi = b.index([multi_amd64, multi_arm64, multi_arm])
    b.tag(multi, "example.com/multi:1")
    b.write()
    return StandardImages(
        path=root,
        busybox=busybox,
        app=app,
        registry=registry,
        web=web,
        web_group=web_group,
        nameless=nameless,
        multi=multi,
        multi_amd64=multi_amd64,
        multi_arm64=multi_arm64,
        multi_arm=multi_arm,
    )


def standard_digests(std: StandardImages) -> dict[str, list[str]]:
    """Expected repo_digests of every standard image, by attribute name."""
    out: dict[str, list[str]] = {}
    for name, repos in STANDARD_REPOS.items():
        digest = (
            std.multi.descriptor.digest if name == "multi" else std.singles[name].manifest.digest
        )
        out[name] = [f"{repo}@{digest}" for repo in repos]
    return out


@pytest.fixture(scope="module")
def std(tmp_path_factory: pytest.TempPathFactory) -> StandardImages:
    """The standard layout, built once per test module."""
    return build_standard_layout(tmp_path_factory.mktemp("std") / "layout")


@pytest.fixture(scope="module")
def std_shim(std: StandardImages) -> Iterator[RunningShim]:
    """A server over the standard layout (backend ``std``), shared by a test module.

    Tests using it must not change the layout or the server.
    """
    config = make_config(backend("std", std.path), pinned=STANDARD_PINNED)
    with running_server(config) as shim:
        yield shim


@pytest.fixture
def sockdir() -> Iterator[Path]:
    """A directory short enough for unix socket paths (under TMPDIR when it can be),
    removed afterwards whatever the test left in it."""
    path = short_tempdir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def wait_serving(sock: Path, proc: subprocess.Popen[Any], timeout: float = 30) -> None:
    """Until the server process ``proc`` answers its health service on ``sock``.

    Fails at once when the process exits first (with what it wrote), and
    after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited early: {proc.communicate()}")
        if sock.exists():
            with grpc.insecure_channel(f"unix:{sock}") as channel:
                try:
                    health = health_pb2_grpc.HealthStub(channel)
                    health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    return
                except grpc.RpcError:
                    pass
        time.sleep(0.05)
    raise AssertionError("server did not come up")


@pytest.fixture
def no_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ``OTEL_*`` variables of whoever runs the tests must not change them.

    The telemetry tests use it (``pytestmark = pytest.mark.usefixtures("no_otel_env")``)
    and set the variables they are about themselves.
    """
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
