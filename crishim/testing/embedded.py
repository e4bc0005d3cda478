"""iSulad-style embedded images, for tests of backends and filters.

An iSulad *embedded image* is described by a manifest with ``schemaVersion``
1 and media type ``application/embedded.manifest+json``: ``image_name``,
``created``, ``layers`` (the first the host path ``/`` or a root device, the
others squashfs image files or bind directories relative to the manifest,
digests optional) and a ``config`` of ``env``, ``entrypoint`` and
``workdir``. It has no image ID, no ``rootfs.diff_ids`` and no ``User``.

* :func:`embedded_manifest` builds such a manifest (a dict);
* :func:`add_embedded_image` stores one in an OCI layout being built with
  :class:`~crishim.testing.ocibuild.LayoutBuilder` and names it in
  ``index.json``, as an importer that copied an iSulad image would;
* :func:`write_isulad_image` writes one to disk in iSulad's own shape (a
  ``manifest`` file next to its squashfs and bind layers).

A backend that meets such an image must carry it to the filters (a record
without config whose ``manifest_media_type`` is :data:`EMBEDDED_MANIFEST`),
never serve it as an OCI image and never crash on it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crishim.oci.spec import EMBEDDED_MANIFEST
from crishim.testing.ocibuild import (
    REF_NAME,
    Descriptor,
    LayoutBuilder,
    canonical_json,
    sha256_digest,
)

__all__ = [
    "BIND_LAYER",
    "EMBEDDED_MANIFEST",
    "SQUASHFS_LAYER",
    "EmbeddedLayer",
    "add_embedded_image",
    "embedded_manifest",
    "write_isulad_image",
]

#: The media type of an embedded layer that is a squashfs image file.
SQUASHFS_LAYER = "application/squashfs.image.rootfs.diff.img"
#: The media type of an embedded layer that is a directory bound into the container.
BIND_LAYER = "application/bind.image.rootfs.diff.dir"

#: A stand-in for a squashfs image: the real magic, then filler. Nothing
#: here mounts it; backends only look at sizes and digests.
_SQUASHFS_MAGIC = b"hsqs"


@dataclass(frozen=True)
class EmbeddedLayer:
    """One layer of an embedded manifest.

    Example::

        layers = [
            EmbeddedLayer(BIND_LAYER, "/"),
            EmbeddedLayer(SQUASHFS_LAYER, "app.sqfs", "/app", size=4096),
        ]
    """

    media_type: str
    #: The host path: ``/`` for the first layer, else relative to the manifest.
    path_in_host: str
    #: Where it is mounted; empty for the first layer.
    path_in_container: str = ""
    size: int = 0
    digest: str = ""

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "mediaType": self.media_type,
            "size": self.size,
            "path_in_host": self.path_in_host,
            "path_in_container": self.path_in_container,
        }
        if self.digest:
            out["digest"] = self.digest
        return out


def embedded_manifest(
    image_name: str,
    layers: Sequence[EmbeddedLayer],
    *,
    created: str = "2024-01-01T00:00:00.000000000Z",
    env: Sequence[str] = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",),
    entrypoint: Sequence[str] = ("/bin/sh",),
    workdir: str = "/",
) -> dict[str, Any]:
    """An embedded manifest as iSulad reads it.

    Example::

        >>> manifest = embedded_manifest("example.com/app:1.0", [EmbeddedLayer(BIND_LAYER, "/")])
        >>> manifest["mediaType"], manifest["schemaVersion"]
        ('application/embedded.manifest+json', 1)
    """
    return {
        "schemaVersion": 1,
        "mediaType": EMBEDDED_MANIFEST,
        "image_name": image_name,
        "created": created,
        "config": {"env": list(env), "entrypoint": list(entrypoint), "workdir": workdir},
        "layers": [layer.to_json() for layer in layers],
    }


def _squashfs_bytes(label: str, size: int = 4096) -> bytes:
    body = _SQUASHFS_MAGIC + label.encode()
    return body + b"\0" * max(0, size - len(body))


def write_isulad_image(
    root: str | os.PathLike[str],
    image_name: str = "example.com/embedded/app:1.0",
    *,
    squashfs: Mapping[str, str] | None = None,
    binds: Mapping[str, str] | None = None,
    with_digests: bool = True,
) -> Path:
    """Write an embedded image in iSulad's on-disk shape; return its manifest path.

    ``root/manifest`` names ``/`` as the first (bind) layer, then one
    squashfs image file per ``squashfs`` entry (file name → path in the
    container) and one bind directory per ``binds`` entry, next to it.

    Example::

        manifest = write_isulad_image(tmp_path / "app", squashfs={"app.sqfs": "/app"})
        assert manifest == tmp_path / "app" / "manifest"
    """
    base = Path(root)
    base.mkdir(parents=True, exist_ok=True)
    layers = [EmbeddedLayer(BIND_LAYER, "/")]
    for file_name, mount in (squashfs if squashfs is not None else {"app.sqfs": "/app"}).items():
        data = _squashfs_bytes(file_name)
        (base / file_name).write_bytes(data)
        digest = sha256_digest(data) if with_digests else ""
        layers.append(EmbeddedLayer(SQUASHFS_LAYER, file_name, mount, len(data), digest))
    for dir_name, mount in (binds or {}).items():
        (base / dir_name).mkdir(parents=True, exist_ok=True)
        layers.append(EmbeddedLayer(BIND_LAYER, dir_name, mount))
    manifest = base / "manifest"
    manifest.write_text(json.dumps(embedded_manifest(image_name, layers), indent=2) + "\n")
    return manifest


def add_embedded_image(
    builder: LayoutBuilder,
    image_name: str = "example.com/embedded/app:1.0",
    *,
    tag: str | None = None,
    layers: Sequence[EmbeddedLayer] | None = None,
) -> Descriptor:
    """Store an embedded manifest in ``builder``'s layout and name it in ``index.json``.

    ``tag`` is the ``org.opencontainers.image.ref.name`` annotation (None:
    ``image_name``; ``""``: no annotation, so only the manifest names it).
    Returns the manifest's descriptor: its digest is the record's ID.

    Example::

        builder = LayoutBuilder(tmp_path / "layout")
        descriptor = add_embedded_image(builder, "example.com/embedded/app:1.0")
        builder.write()
        hidden = ["example.com/embedded/app:1.0", descriptor.digest]  # ContractSetup.hidden
    """
    if layers is None:
        data = _squashfs_bytes(image_name)
        layers = [
            EmbeddedLayer(BIND_LAYER, "/"),
            EmbeddedLayer(
                SQUASHFS_LAYER,
                "app.sqfs",
                "/app",
                len(data),
                sha256_digest(data),
            ),
        ]
    manifest = builder.blob(
        canonical_json(embedded_manifest(image_name, layers)), EMBEDDED_MANIFEST
    )
    name = image_name if tag is None else tag
    annotations = {REF_NAME: name} if name else None
    builder.add_raw_entry(
        Descriptor(manifest.media_type, manifest.digest, manifest.size, annotations).to_json()
    )
    return manifest
