"""The images the registry tests push, built once per session with LayoutBuilder."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from crishim.testing.ocibuild import (
    OCI_MANIFEST,
    BuiltArtifact,
    BuiltImage,
    BuiltIndex,
    Descriptor,
    LayoutBuilder,
    write_json_blob,
)

from .push import Pusher

#: The platform the test servers resolve indexes to (independent of the host).
PLATFORM = {"os": "linux", "architecture": "arm64", "variant": "v8"}

#: Size of the incompressible layer of ``big`` (slow enough to catch mid-blob
#: through a throttled proxy, quick to pull without one).
BIG_LAYER_BYTES = 3 * 1024 * 1024


@dataclass(frozen=True)
class RegistryImages:
    layout: Path
    #: ``test/small`` tags 1, also, latest; two layers, User 1000.
    small: BuiltImage
    #: ``test/multi:1``: an index over linux/amd64, linux/arm64/v8, linux/arm/v7.
    multi: BuiltIndex
    multi_amd64: BuiltImage
    multi_arm64: BuiltImage
    multi_arm: BuiltImage
    #: ``test/docker:1``: Docker schema-2 media types.
    docker: BuiltImage
    #: ``test/shared-a:1`` and ``test/shared-b:1``: one base layer in common.
    shared_a: BuiltImage
    shared_b: BuiltImage
    #: ``test/big:1``: one incompressible layer of BIG_LAYER_BYTES.
    big: BuiltImage
    #: ``test/artifact:1``: an OCI manifest whose config is not an image config.
    artifact_manifest: str
    #: ``test/moving:1`` points at ``small`` at first; tests may move it.
    moving: BuiltImage
    #: ``test/oras:1``: an ORAS-style artifact (empty config, ``artifactType``, two titled files).
    oras: BuiltArtifact
    #: ``test/typed:1``: an artifact with a config of its own type and an ``artifactType``.
    typed: BuiltArtifact
    #: ``test/untyped:1``: an artifact with the empty config and no ``artifactType``.
    untyped: BuiltArtifact

    def blob_digests(self, image: BuiltImage) -> set[str]:
        return {image.config.digest, *(layer.digest for layer in image.layers)}


def build_images(root: Path) -> RegistryImages:
    b = LayoutBuilder(root)
    small = b.image(
        name="small",
        user="1000",
        layers=[{"etc/small": "small\n"}, {"usr/share/small/data": "s" * 4000}],
        annotations={"org.opencontainers.image.title": "small"},
    )
    multi_amd64 = b.image(name="multi", architecture="amd64", files={"m": "amd64\n"})
    multi_arm64 = b.image(
        name="multi",
        architecture="arm64",
        variant="v8",
        layers=[{"m": "arm64\n"}, {"extra": "arm64 only\n" * 20}],
    )
    multi_arm = b.image(name="multi", architecture="arm", variant="v7", files={"m": "arm\n"})
    multi = b.index([multi_amd64, multi_arm64, multi_arm])
    docker = b.image(name="docker", docker=True, files={"d": "docker media types\n"})
    base: dict[str, bytes | str] = {"lib/base.so": "base layer shared by two images\n" * 50}
    shared_a = b.image(name="shared-a", layers=[base, {"a": "only in a\n"}])
    shared_b = b.image(name="shared-b", layers=[base, {"b": "only in b\n"}])
    noise = random.Random(4).randbytes(BIG_LAYER_BYTES)
    big = b.image(name="big", layers=[{"big/noise.bin": noise}, {"big/README": "big\n"}])
    config = b.blob(b'{"kind":"not an image"}', "application/vnd.example.config.v1+json")
    layer, _ = b.layer({"payload": "artifact\n"})
    artifact = write_json_blob(
        b,
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config.to_json(),
            "layers": [layer.to_json()],
        },
        "application/vnd.oci.image.manifest.v1+json",
    )
    oras = b.artifact(
        {"hello.txt": "hello from an image volume\n", "data.json": ('{"k":1}', "application/json")},
        artifact_type="application/vnd.crishim.test.volume.v1",
        annotations={"org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
    )
    typed = b.artifact(
        {
            "chart.tgz": (
                "not really a chart",
                "application/vnd.cncf.helm.chart.content.v1.tar+gzip",
            )
        },
        artifact_type="application/vnd.cncf.helm.config.v1+json",
        config=(b'{"name":"chart","version":"1.0.0"}', "application/vnd.cncf.helm.config.v1+json"),
    )
    untyped = b.artifact({"only.txt": "no artifactType\n"}, artifact_type=None)
    b.write()
    return RegistryImages(
        layout=root,
        small=small,
        multi=multi,
        multi_amd64=multi_amd64,
        multi_arm64=multi_arm64,
        multi_arm=multi_arm,
        docker=docker,
        shared_a=shared_a,
        shared_b=shared_b,
        big=big,
        artifact_manifest=artifact.digest,
        moving=small,
        oras=oras,
        typed=typed,
        untyped=untyped,
    )


def push_images(images: RegistryImages, base_url: str) -> None:
    """Push every test image to the registry at ``base_url`` (no auth)."""
    pusher = Pusher(base_url, images.layout)
    try:
        pusher.image("test/small", images.small, ["1", "also", "latest"])
        pusher.index("test/multi", images.multi, ["1"])
        pusher.image("test/docker", images.docker, ["1"])
        pusher.image("test/shared-a", images.shared_a, ["1"])
        pusher.image("test/shared-b", images.shared_b, ["1"])
        pusher.image("test/big", images.big, ["1"])
        pusher.image("test/moving", images.small, ["1"])
        pusher.image("test/oras", images.oras, ["1"])
        pusher.image("test/typed", images.typed, ["1"])
        pusher.image("test/untyped", images.untyped, ["1"])
        # the artifact: its blobs, then the manifest under a tag
        manifest_path = images.layout / "blobs" / "sha256" / images.artifact_manifest[7:]
        manifest = manifest_path.read_bytes()
        parsed = json.loads(manifest)
        for raw in (parsed["config"], *parsed["layers"]):
            pusher.blob("test/artifact", Descriptor(raw["mediaType"], raw["digest"], raw["size"]))
        pusher.manifest(
            "test/artifact", Descriptor(OCI_MANIFEST, images.artifact_manifest, len(manifest)), "1"
        )
    finally:
        pusher.client.close()
