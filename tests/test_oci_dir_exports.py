"""oci-dir serves what ``ctr images export`` writes, digest-only names included.

containerd's exporter names each ``index.json`` entry with
``io.containerd.image.name`` (the full name) and
``org.opencontainers.image.ref.name`` (what follows the repository: ``tag``,
``tag@<digest>``, or ``@<digest>`` for an image named by digest only), one
entry per name, in a flat index; without ``--all-platforms`` an index keeps
only the exported platform's manifests. The fixture here is built that way;
the last test makes one with ``ctr images pull`` by digest and ``ctr images
export`` on a real containerd.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from containerd.images import host_platform
from containerd.process import ContainerdProcess
from registry.images import RegistryImages
from registry.process import RegistryProcess

from crishim import reference
from crishim.model import Platform
from crishim.oci.layout import Layout
from crishim.oci.resolve import BrokenEntry
from crishim.testing.ocibuild import (
    CONTAINERD_NAME,
    REF_NAME,
    BuiltImage,
    BuiltIndex,
    LayoutBuilder,
)
from crishim.testing.server import RunningShim, running_server

pytest_plugins = ["registry.fixtures", "containerd.fixtures"]

Server = Callable[..., RunningShim]

AMD64 = {"os": "linux", "architecture": "amd64"}
APP = "example.com/team/app"
MULTI = "example.com/team/multi"


def ctr_entry(target: BuiltImage | BuiltIndex, name: str) -> dict[str, Any]:
    """An index.json entry as containerd's exporter writes it for the image record ``name``."""
    descriptor = target.descriptor if isinstance(target, BuiltIndex) else target.manifest
    # what follows the repository in the name: "tag", "tag@<digest>" or "@<digest>"
    repository = reference.parse(name).repository
    assert name.startswith(repository)
    ref_name = name[len(repository) :].removeprefix(":")
    return {
        "mediaType": descriptor.media_type,
        "digest": descriptor.digest,
        "size": descriptor.size,
        "annotations": {CONTAINERD_NAME: name, REF_NAME: ref_name},
    }


@dataclass(frozen=True)
class Export:
    root: Path
    app: BuiltImage
    pinned: BuiltImage
    multi: BuiltIndex
    multi_amd64: BuiltImage


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Export:
    b = LayoutBuilder(tmp_path_factory.mktemp("ctr-export") / "layout")
    app = b.image(name="app", user="1000")
    pinned = b.image(name="pinned")
    amd64 = b.image(name="multi", architecture="amd64")
    arm64 = b.image(name="multi", architecture="arm64", variant="v8")
    multi = b.index([amd64, arm64])
    for target, name in (
        (app, f"{APP}:1.0"),
        (app, f"{APP}@{app.manifest.digest}"),  # a digest-only name: ref.name "@sha256:..."
        (pinned, f"{APP}:pinned@{pinned.manifest.digest}"),  # ref.name "pinned@sha256:..."
        (multi, f"{MULTI}:2"),
        (multi, f"{MULTI}@{multi.descriptor.digest}"),
    ):
        b.add_raw_entry(ctr_entry(target, name))
    b.write()
    # a partial platform set: only linux/amd64 was exported
    for blob in (arm64.manifest, arm64.config, *arm64.layers):
        b.blob_path(blob.digest).unlink()
    return Export(b.root, app, pinned, multi, amd64)


def serve(root: Path, **options: Any) -> Any:
    backend = {"name": "export", "type": "oci-dir", "options": {"path": str(root), **options}}
    return running_server({"platform": AMD64, "backends": [backend]})


@pytest.fixture(scope="module")
def shim(export: Export) -> Iterator[RunningShim]:
    with serve(export.root) as running:
        yield running


def test_every_entry_is_served(shim: RunningShim, export: Export) -> None:
    assert sorted(image.id for image in shim.list()) == sorted(
        [export.app.id, export.pinned.id, export.multi_amd64.id]
    )


def test_a_digest_only_name_is_a_repo_digest(shim: RunningShim, export: Export) -> None:
    image = shim.status(f"{APP}@{export.app.manifest.digest}").image
    assert image.id == export.app.id
    assert list(image.repo_tags) == [f"{APP}:1.0"]
    assert list(image.repo_digests) == [f"{APP}@{export.app.manifest.digest}"]
    assert image.uid.value == 1000


def test_a_tag_and_digest_ref_name(shim: RunningShim, export: Export) -> None:
    image = shim.status(f"{APP}@{export.pinned.manifest.digest}").image
    assert image.id == export.pinned.id
    assert list(image.repo_digests) == [f"{APP}@{export.pinned.manifest.digest}"]


def test_a_partial_platform_set_serves_the_exported_platform(
    shim: RunningShim, export: Export
) -> None:
    image = shim.status(f"{MULTI}:2").image
    assert image.id == export.multi_amd64.id
    assert list(image.repo_digests) == [f"{MULTI}@{export.multi.descriptor.digest}"]
    assert shim.status(f"{MULTI}@{export.multi.descriptor.digest}").image == image


def test_nothing_is_skipped(export: Export, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING), serve(export.root) as fresh:
        assert len(fresh.list()) == 3
    assert not [r for r in caplog.records if "skipped entry" in r.getMessage()]


DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("annotations", "repository", "expected"),
    [
        ({REF_NAME: "1.0"}, "example.com/r", ["example.com/r:1.0"]),
        ({REF_NAME: f"@{DIGEST}"}, "example.com/r", [f"example.com/r@{DIGEST}"]),
        ({REF_NAME: DIGEST}, "example.com/r", [f"example.com/r@{DIGEST}"]),
        ({REF_NAME: f"1.0@{DIGEST}"}, "example.com/r", [f"example.com/r:1.0@{DIGEST}"]),
        (
            {CONTAINERD_NAME: f"example.com/c@{DIGEST}", REF_NAME: f"@{DIGEST}"},
            "",
            [f"example.com/c@{DIGEST}"],
        ),
        (
            {CONTAINERD_NAME: "example.com/c:2", REF_NAME: f"@{DIGEST}"},
            "",
            ["example.com/c:2", f"example.com/c@{DIGEST}"],
        ),
        # with no repository, a digest alone names nothing; a tag alone is a name
        ({REF_NAME: f"@{DIGEST}"}, "", []),
        ({REF_NAME: DIGEST}, "", []),
        ({REF_NAME: "busybox"}, "", ["docker.io/library/busybox:latest"]),
        ({REF_NAME: "example.com/full:3"}, "example.com/r", ["example.com/full:3"]),
    ],
)
def test_ref_name_forms(
    tmp_path: Path, annotations: dict[str, str], repository: str, expected: list[str]
) -> None:
    layout = Layout(tmp_path, Platform("linux", "amd64"), repository)
    names = layout.names({"digest": DIGEST, "annotations": annotations})
    assert [str(name) for name in names] == expected


@pytest.mark.parametrize("value", ["@sha256:abc", "@md5:" + "a" * 32, "-bad@" + DIGEST])
def test_a_malformed_ref_name_is_reported(tmp_path: Path, value: str) -> None:
    layout = Layout(tmp_path, Platform("linux", "amd64"), "example.com/r")
    with pytest.raises(BrokenEntry, match=REF_NAME):
        layout.names({"digest": DIGEST, "annotations": {REF_NAME: value}})


# --------------------------------------------------------------------------- a real ctr export


def test_what_ctr_images_export_writes_after_a_digest_only_pull(
    containerd: ContainerdProcess,
    registry: RegistryProcess,
    images: RegistryImages,
    tmp_path: Path,
) -> None:
    """``ctr images pull`` by digest, ``ctr images export``: oci-dir serves both names."""
    namespace = "crishim-export"
    architecture, variant = host_platform()
    multi = {"amd64": images.multi_amd64, "arm64": images.multi_arm64}.get(architecture)
    if multi is None:
        pytest.skip(f"the test registry's multi image has no {architecture} manifest")
    by_digest = f"{registry.host}/test/small@{images.small.manifest.digest}"
    by_tag = f"{registry.host}/test/multi:1"
    names = [by_digest, by_tag]
    try:
        for name in names:
            containerd.ctr("images", "pull", "--plain-http", name, namespace=namespace)
        archive = tmp_path / "export.tar"
        containerd.ctr("images", "export", str(archive), *names, namespace=namespace)
    finally:
        for name in names:
            with contextlib.suppress(RuntimeError):
                containerd.ctr("images", "rm", "--sync", name, namespace=namespace)
    root = tmp_path / "layout"
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")
    entries = json.loads((root / "index.json").read_text())["manifests"]
    # what containerd wrote: one entry per name, the digest-only one as "@sha256:..."
    ref_names = {e["annotations"][CONTAINERD_NAME]: e["annotations"][REF_NAME] for e in entries}
    assert ref_names == {by_digest: f"@{images.small.manifest.digest}", by_tag: "1"}
    platform = {"os": "linux", "architecture": architecture, "variant": variant or ""}
    backend = {"name": "export", "type": "oci-dir", "options": {"path": str(root)}}
    with running_server({"platform": platform, "backends": [backend]}) as shim:
        image = shim.status(by_digest).image
        assert image.id == images.small.id
        assert list(image.repo_tags) == []
        assert list(image.repo_digests) == [by_digest]
        assert shim.status(by_tag).image.id == multi.id
        assert sorted(i.id for i in shim.list()) == sorted([images.small.id, multi.id])
    shutil.rmtree(root)
