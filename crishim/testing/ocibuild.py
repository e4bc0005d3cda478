"""Deterministic builder for OCI image layouts, for tests and examples.

Everything produced here is byte-for-byte reproducible: the same sequence of
calls yields the same blobs, digests and ``index.json`` on every run.  JSON is
serialised with sorted keys and compact separators, layer tarballs use fixed
ownership, modes and timestamps, and gzip streams carry no name and mtime 0.

Typical use::

    b = LayoutBuilder(tmp_path / "layout")
    img = b.image(files={"etc/hello": "hi\\n"}, user="1000")
    b.tag(img, "example.com/app:1.0")
    b.write()

Layer file maps take plain ``bytes``/``str`` (a regular file, mode 0644),
:class:`File` (a regular file with another mode, e.g. an executable) and
:class:`Symlink`::

    b.image(files={
        "bin/busybox": File(busybox_bytes, mode=0o755),
        "bin/sh": Symlink("busybox"),
    })

Besides the standard library it uses only :mod:`crishim.oci.spec` (whose
media types and annotation keys it re-exports) and
:mod:`crishim.oci.atomic`, both standard library only, so backend authors
can depend on it freely (importing it loads no more than ``import crishim``
does: tests/test_oci_spec.py checks).
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping, Sequence

from crishim.oci import spec
from crishim.oci.atomic import atomic_write
from crishim.oci.spec import (
    CONTAINERD_NAME,
    DOCKER_CONFIG,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    REF_NAME,
)
from crishim.testing._documents import (
    BuiltArtifact,
    BuiltImage,
    BuiltIndex,
    Descriptor,
    canonical_json,
    chain_id,
    sha256_digest,
)
from crishim.testing._layers import (
    File,
    LayerEntry,
    LayerFiles,
    Symlink,
    as_bytes,
    gzip_bytes,
    tar_bytes,
)

__all__ = [
    "CONTAINERD_NAME",
    "DEFAULT_PATH_ENV",
    "DOCKER_CONFIG",
    "DOCKER_LAYER",
    "DOCKER_LIST",
    "DOCKER_MANIFEST",
    "LAYOUT_VERSION",
    "OCI_CONFIG",
    "OCI_EMPTY",
    "OCI_INDEX",
    "OCI_LAYER_GZIP",
    "OCI_MANIFEST",
    "REF_NAME",
    "TITLE",
    "BuiltArtifact",
    "BuiltImage",
    "BuiltIndex",
    "Descriptor",
    "File",
    "LayerEntry",
    "LayerFiles",
    "LayoutBuilder",
    "Symlink",
    "canonical_json",
    "chain_id",
    "sha256_digest",
    "write_json_blob",
]

#: The key of an artifact file's name (ORAS's annotation).
TITLE = "org.opencontainers.image.title"

#: The media type of the Docker layers the builder writes (gzipped):
#: ``crishim.oci.spec.DOCKER_LAYER_GZIP``.
DOCKER_LAYER = spec.DOCKER_LAYER_GZIP

#: The ``imageLayoutVersion`` the builder writes in ``oci-layout``.
LAYOUT_VERSION = "1.0.0"
#: The ``Env`` of an image built without ``env=``.
DEFAULT_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_OUTPUT_FILE_MODE = 0o644


def _write(path: pathlib.Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (mode 0644 whatever the umask)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data, mode=_OUTPUT_FILE_MODE, fault="ocibuild")


def _platform(os_name: str, architecture: str, variant: str | None) -> dict[str, str]:
    platform = {"architecture": architecture, "os": os_name}
    if variant:
        platform["variant"] = variant
    return platform


# --------------------------------------------------------------------------- builder


class LayoutBuilder:
    """Builds an OCI image layout under ``root``.

    Blobs are written as soon as they are created (idempotently); ``index.json``
    and ``oci-layout`` are written by :meth:`write`.  ``docker_media_types``
    selects Docker schema-2 media types by default; ``image()``, ``layer()``
    and ``index()`` accept ``docker=`` to override it per call. Without
    :meth:`write` the builder fills a plain content store: ``blobs/`` only.

    Example::

        builder = LayoutBuilder(tmp_path / "layout")
        app = builder.image(files={"etc/app.conf": "x = 1"}, user="1000", name="app")
        builder.tag(app, "example.com/app:1.0")  # an index.json entry, ref.name annotation
        builder.tag(app, "example.com/app:1.0", key=CONTAINERD_NAME)  # as containerd names it
        root = builder.write()
    """

    def __init__(self, root: str | os.PathLike[str], *, docker_media_types: bool = False) -> None:
        self.root = pathlib.Path(root)
        self.docker_media_types = docker_media_types
        self._entries: list[dict[str, object]] = []

    # ------------------------------------------------------------------ blobs

    @property
    def blobs_dir(self) -> pathlib.Path:
        """``root/blobs/sha256``."""
        return self.root / "blobs" / "sha256"

    def blob_path(self, digest: str) -> pathlib.Path:
        """Path of the blob file for ``digest`` (``sha256:<hex>``)."""
        algorithm, _, encoded = digest.partition(":")
        return self.root / "blobs" / algorithm / encoded

    def blob(self, data: bytes, media_type: str) -> Descriptor:
        """Store ``data`` as a blob (idempotent) and return its descriptor."""
        digest = sha256_digest(data)
        path = self.blob_path(digest)
        if not (path.is_file() and path.read_bytes() == data):
            _write(path, data)
        return Descriptor(media_type=media_type, digest=digest, size=len(data))

    def _docker(self, docker: bool | None) -> bool:
        return self.docker_media_types if docker is None else docker

    # ------------------------------------------------------------------ layers

    def layer(self, files: LayerFiles, *, docker: bool | None = None) -> tuple[Descriptor, str]:
        """Store a gzipped deterministic tar of ``files``; return (descriptor, diff_id).

        Keys are paths inside the image (a leading ``/`` is ignored); a key
        ending in ``/`` with empty content makes an empty directory.  Parent
        directories are added automatically (mode 0755).  Values are
        ``bytes``/``str`` (a file of mode 0644; ``str`` is UTF-8 encoded),
        :class:`File` (a file with its own mode) or :class:`Symlink`.
        """
        tar = tar_bytes(files)
        media_type = DOCKER_LAYER if self._docker(docker) else OCI_LAYER_GZIP
        return self.blob(gzip_bytes(tar), media_type), sha256_digest(tar)

    # ------------------------------------------------------------------ images

    def image(
        self,
        *,
        files: LayerFiles | None = None,
        layers: Sequence[LayerFiles] | None = None,
        user: str = "",
        os: str = "linux",
        architecture: str = "amd64",
        variant: str | None = None,
        env: list[str] | None = None,
        cmd: list[str] | None = None,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
        created: str = "2024-01-01T00:00:00Z",
        name: str | None = None,
        docker: bool | None = None,
    ) -> BuiltImage:
        """Build a single-platform image (layers, config, manifest blobs).

        ``files`` is shorthand for ``layers=[files]``; with neither, one small
        layer holding ``etc/crishim-image`` (naming ``name`` and the platform)
        is used.  ``env`` defaults to a standard ``PATH``.  Images built with
        identical arguments have identical IDs: pass a distinct ``name`` (or
        content) to tell default images apart.
        """
        if files is not None and layers is not None:
            raise ValueError("pass either files= or layers=, not both")
        use_docker = self._docker(docker)
        platform = _platform(os, architecture, variant)
        if layers is None:
            if files is None:
                label = name or "image"
                plat = "/".join(
                    platform[k] for k in ("os", "architecture", "variant") if k in platform
                )
                files = {"etc/crishim-image": f"{label} ({plat})\n"}
            layers = [files]

        layer_descs: list[Descriptor] = []
        diff_ids: list[str] = []
        for layer_files in layers:
            desc, diff_id = self.layer(layer_files, docker=use_docker)
            layer_descs.append(desc)
            diff_ids.append(diff_id)

        exec_config: dict[str, object] = {
            "User": user,
            "Env": list(env) if env is not None else [DEFAULT_PATH_ENV],
            "WorkingDir": "/",
        }
        if cmd is not None:
            exec_config["Cmd"] = list(cmd)
        if labels:
            exec_config["Labels"] = dict(labels)

        config_json: dict[str, object] = {
            "architecture": architecture,
            "os": os,
            "created": created,
            "config": exec_config,
            "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
            "history": [
                {"created": created, "created_by": f"crishim.testing.ocibuild layer {i}"}
                for i in range(len(diff_ids))
            ],
        }
        if variant:
            config_json["variant"] = variant
        config_desc = write_json_blob(
            self, config_json, DOCKER_CONFIG if use_docker else OCI_CONFIG
        )

        manifest_type = DOCKER_MANIFEST if use_docker else OCI_MANIFEST
        manifest_json: dict[str, object] = {
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": config_desc.to_json(),
            "layers": [d.to_json() for d in layer_descs],
        }
        if annotations:
            manifest_json["annotations"] = dict(annotations)
        raw = write_json_blob(self, manifest_json, manifest_type)
        manifest_desc = Descriptor(manifest_type, raw.digest, raw.size, platform=platform)
        return BuiltImage(
            manifest=manifest_desc,
            config=config_desc,
            layers=tuple(layer_descs),
            config_json=config_json,
            manifest_json=manifest_json,
        )

    def artifact(
        self,
        files: Mapping[str, bytes | str | tuple[bytes | str, str]],
        *,
        artifact_type: str | None = "application/vnd.crishim.test.v1",
        config: tuple[bytes, str] | None = None,
        annotations: dict[str, str] | None = None,
    ) -> BuiltArtifact:
        """Build an OCI artifact the way ORAS pushes one: a blob per file, titled.

        ``files`` maps a file name to its content, or to (content, media
        type); the default layer media type is ``application/vnd.oci.image.layer.v1.tar``
        (what ``oras push`` uses). The config is the empty descriptor (``{}``)
        unless ``config`` gives (bytes, media type). ``artifact_type`` is the
        manifest's ``artifactType`` (None: left out, as older ORAS wrote it).
        """
        layers: list[Descriptor] = []
        for name, value in files.items():
            data, media_type = value if isinstance(value, tuple) else (value, OCI_LAYER)
            blob = self.blob(as_bytes(data), media_type)
            layers.append(Descriptor(blob.media_type, blob.digest, blob.size, {TITLE: name}))
        data, media_type = config if config is not None else (b"{}", OCI_EMPTY)
        config_desc = self.blob(data, media_type)
        manifest_json: dict[str, object] = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config_desc.to_json(),
            "layers": [d.to_json() for d in layers],
        }
        if artifact_type is not None:
            manifest_json["artifactType"] = artifact_type
        if annotations:
            manifest_json["annotations"] = dict(annotations)
        manifest = write_json_blob(self, manifest_json, OCI_MANIFEST)
        return BuiltArtifact(
            manifest=manifest,
            config=config_desc,
            layers=tuple(layers),
            manifest_json=manifest_json,
            artifact_type=artifact_type or media_type,
        )

    def index(
        self,
        images: list[BuiltImage],
        *,
        annotations: dict[str, str] | None = None,
        docker: bool | None = None,
    ) -> BuiltIndex:
        """Build an image index (Docker manifest list with ``docker``) over ``images``."""
        if not images:
            raise ValueError("an index needs at least one image")
        media_type = DOCKER_LIST if self._docker(docker) else OCI_INDEX
        index_json: dict[str, object] = {
            "schemaVersion": 2,
            "mediaType": media_type,
            "manifests": [img.manifest.to_json() for img in images],
        }
        if annotations:
            index_json["annotations"] = dict(annotations)
        desc = write_json_blob(self, index_json, media_type)
        return BuiltIndex(descriptor=desc, images=tuple(images), index_json=index_json)

    # ------------------------------------------------------------------ index.json

    def tag(
        self,
        target: BuiltImage | BuiltIndex | BuiltArtifact,
        name: str,
        *,
        key: str = REF_NAME,
        extra_annotations: dict[str, str] | None = None,
    ) -> None:
        """Add a top-level ``index.json`` entry for ``target`` annotated ``{key: name}``.

        Image entries keep their platform; ``extra_annotations`` are merged
        under the name annotation (``key`` wins on conflict).
        """
        base = target.descriptor if isinstance(target, BuiltIndex) else target.manifest
        merged = dict(extra_annotations or {})
        merged[key] = name
        entry = Descriptor(base.media_type, base.digest, base.size, merged, base.platform)
        self._entries.append(entry.to_json())

    def add_raw_entry(self, descriptor: dict[str, object]) -> None:
        """Append ``descriptor`` verbatim to ``index.json`` (for broken-layout tests)."""
        self._entries.append(dict(descriptor))

    @property
    def entries(self) -> list[dict[str, object]]:
        """A copy of the top-level ``index.json`` manifests added so far."""
        return [dict(e) for e in self._entries]

    def index_json(self) -> dict[str, object]:
        """The top-level ``index.json`` document as it would be written."""
        return {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": self.entries}

    def write(self) -> pathlib.Path:
        """Write ``oci-layout`` and ``index.json`` atomically; return the layout root."""
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        _write(self.root / "oci-layout", canonical_json({"imageLayoutVersion": LAYOUT_VERSION}))
        _write(self.root / "index.json", canonical_json(self.index_json()))
        return self.root


def write_json_blob(builder: LayoutBuilder, obj: object, media_type: str) -> Descriptor:
    """Store ``canonical_json(obj)`` as a blob of ``builder`` and return its descriptor.

    For documents the builder does not make itself (a config with odd
    fields, a manifest of another kind).

    Example::

        config = write_json_blob(builder, {"architecture": "amd64", "os": "linux"}, OCI_CONFIG)
        builder.add_raw_entry(config.to_json())  # a broken entry: not a manifest
    """
    return builder.blob(canonical_json(obj), media_type)
