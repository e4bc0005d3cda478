"""Descriptors and what :mod:`crishim.testing.ocibuild` builds (it re-exports the names).

Standard library only, besides :mod:`crishim.oci.spec`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from crishim.oci import spec


def canonical_json(obj: object) -> bytes:
    """Serialise ``obj`` as compact, key-sorted UTF-8 JSON (no trailing newline).

    Example::

        >>> canonical_json({"b": 1, "a": [True, None]})
        b'{"a":[true,null],"b":1}'
    """
    text = json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return text.encode("utf-8")


def sha256_digest(data: bytes) -> str:
    """Return the OCI digest string ``sha256:<hex>`` of ``data``.

    Example::

        >>> sha256_digest(b"")
        'sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'
    """
    return spec.digest_of(data)


def chain_id(diff_ids: list[str] | tuple[str, ...]) -> str:
    """OCI ChainID: ``chain(L0) = diff0``; ``chain(Ln) = sha256(chain(Ln-1) + " " + diffn)``.

    Raises ValueError for no layers (``crishim.oci.spec.chain_id`` answers
    an empty string there).

    Example::

        >>> one = "sha256:" + "1" * 64
        >>> chain_id([one]) == one
        True
        >>> chain_id([one, one]) == sha256_digest(f"{one} {one}".encode())
        True
    """
    if not diff_ids:
        raise ValueError("chain_id needs at least one diff_id")
    return spec.chain_id(diff_ids)


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor.

    Example::

        >>> d = Descriptor(OCI_CONFIG, sha256_digest(b"{}"), 2)
        >>> d.to_json()["size"], d.hex[:12]
        (2, '44136fa355b3')
    """

    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] | None = None
    platform: dict[str, str] | None = None

    def to_json(self) -> dict[str, object]:
        """The descriptor as OCI JSON (``mediaType``, ``digest``, ``size``, optionals)."""
        out: dict[str, object] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform:
            out["platform"] = dict(self.platform)
        return out

    @property
    def hex(self) -> str:
        """The encoded part of the digest (the blob file name)."""
        return self.digest.split(":", 1)[1]


@dataclass(frozen=True)
class BuiltImage:
    """One single-platform image written into a layout.

    What :meth:`LayoutBuilder.image` returns: its descriptors and JSON, and
    what the CRI must report for it (``id``, ``size``).

    Example::

        image = builder.image(user="1000", name="app")
        expected = ExpectedImage(id=image.id, size=image.size, user="1000")
        digest_name = f"example.com/app@{image.manifest.digest}"
    """

    manifest: Descriptor
    config: Descriptor
    layers: tuple[Descriptor, ...]
    config_json: dict[str, object]
    manifest_json: dict[str, object]

    @property
    def id(self) -> str:
        """The CRI image ID: the digest of the config blob."""
        return self.config.digest

    @property
    def size(self) -> int:
        """Manifest + config + compressed layer sizes (crishim's rule for Image.size)."""
        return self.manifest.size + self.config.size + sum(layer.size for layer in self.layers)

    @property
    def diff_ids(self) -> list[str]:
        """The config's ``rootfs.diff_ids`` (digests of the uncompressed layer tars)."""
        rootfs = self.config_json["rootfs"]
        assert isinstance(rootfs, dict)
        diff_ids = rootfs["diff_ids"]
        assert isinstance(diff_ids, list)
        return [str(d) for d in diff_ids]

    @property
    def chain_id(self) -> str:
        """The OCI ChainID of the top layer."""
        return chain_id(self.diff_ids)

    @property
    def platform(self) -> dict[str, str]:
        """The platform recorded on the manifest descriptor."""
        return dict(self.manifest.platform or {})


@dataclass(frozen=True)
class BuiltArtifact:
    """An OCI artifact (an image manifest that is not a container image) in a layout.

    What :meth:`LayoutBuilder.artifact` returns; its ``id`` and ``size`` are
    what crishim reports for it.

    Example::

        chart = builder.artifact({"chart.tgz": b"..."}, artifact_type="application/vnd.cncf.helm")
        name = "example.com/charts/app:1.0"
        builder.tag(chart, name)
        expected = ExpectedImage(id=chart.id, repo_tags=[name], size=chart.size)
    """

    manifest: Descriptor
    config: Descriptor
    layers: tuple[Descriptor, ...]
    manifest_json: dict[str, object]
    #: ``artifactType``, or the config's media type when the manifest names none.
    artifact_type: str

    @property
    def id(self) -> str:
        """The CRI image ID crishim gives an artifact: its manifest digest."""
        return self.manifest.digest

    @property
    def size(self) -> int:
        """Manifest + config + layer sizes, as crishim reports an artifact's size."""
        return self.manifest.size + self.config.size + sum(layer.size for layer in self.layers)


@dataclass(frozen=True)
class BuiltIndex:
    """An image index (or Docker manifest list) written into a layout.

    Example::

        images = [builder.image(architecture="amd64"), builder.image(architecture="arm64")]
        multi = builder.index(images)
        builder.tag(multi, "example.com/multi:1")
        digest_name = f"example.com/multi@{multi.descriptor.digest}"  # the index's digest
    """

    descriptor: Descriptor
    images: tuple[BuiltImage, ...]
    index_json: dict[str, object]
