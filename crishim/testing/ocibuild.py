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

Besides the standard library it uses only :mod:`crishim.oci.spec` (pure,
standard library only), whose media types and annotation keys it re-exports,
so backend authors can depend on it freely.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import pathlib
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from crishim.oci import spec
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

_GZIP_LEVEL = 6
_FILE_MODE = 0o644
_DIR_MODE = 0o755
_SYMLINK_MODE = 0o777
_OUTPUT_FILE_MODE = 0o644


# --------------------------------------------------------------------------- helpers


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


def _fsync_dir(path: pathlib.Path) -> None:
    """Best-effort fsync of a directory so a rename into it is durable."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: pathlib.Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same dir, fsync, os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _OUTPUT_FILE_MODE)
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        # os.open's mode is filtered by the umask; make the result independent of it.
        os.chmod(tmp, _OUTPUT_FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _normalise_path(raw: str) -> tuple[str, bool]:
    """Return (clean relative path, is_directory) for a layer file key."""
    is_dir = raw.endswith("/")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if not parts:
        raise ValueError(f"invalid layer path {raw!r}")
    if ".." in parts:
        raise ValueError(f"layer path must not contain '..': {raw!r}")
    return "/".join(parts), is_dir


def _as_bytes(value: bytes | str) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def _as_entry(raw: str, value: LayerEntry) -> File | Symlink:
    if isinstance(value, File | Symlink):
        return value
    if isinstance(value, bytes | bytearray | memoryview | str):
        return File(_as_bytes(value), mode=_FILE_MODE)
    raise TypeError(f"layer path {raw!r}: unsupported value {type(value).__name__}")


def _tar_bytes(files: LayerFiles) -> bytes:
    """Build a deterministic uncompressed tar of ``files`` (parent dirs added)."""
    # path -> entry; None for directories
    entries: dict[str, File | Symlink | None] = {}

    def add_dir(path: str) -> None:
        if entries.get(path) is not None:
            raise ValueError(f"layer path {path!r} is both a file and a directory")
        entries[path] = None

    for raw, value in files.items():
        path, is_dir = _normalise_path(raw)
        parts = path.split("/")
        for i in range(1, len(parts)):
            add_dir("/".join(parts[:i]))
        if is_dir:
            if isinstance(value, File | Symlink) or _as_bytes(value):
                raise ValueError(f"directory entry {raw!r} must have empty content")
            add_dir(path)
            continue
        if path in entries:
            raise ValueError(f"duplicate or conflicting layer path {raw!r}")
        entries[path] = _as_entry(raw, value)

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        # Sorting by path puts every parent directory before its children.
        for path in sorted(entries):
            content = entries[path]
            info = tarfile.TarInfo(path)
            info.mtime = 0
            info.uid = 0
            info.gid = 0
            info.uname = ""
            info.gname = ""
            if content is None:
                info.type = tarfile.DIRTYPE
                info.mode = _DIR_MODE
                tar.addfile(info)
            elif isinstance(content, Symlink):
                info.type = tarfile.SYMTYPE
                info.mode = _SYMLINK_MODE
                info.linkname = content.target
                tar.addfile(info)
            else:
                info.type = tarfile.REGTYPE
                info.mode = content.mode
                data = _as_bytes(content.content)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _gzip_bytes(data: bytes) -> bytes:
    """Gzip ``data`` with no file name, mtime 0 and a fixed compression level."""
    buf = io.BytesIO()
    with gzip.GzipFile(
        filename="", mode="wb", fileobj=buf, compresslevel=_GZIP_LEVEL, mtime=0
    ) as gz:
        gz.write(data)
    return buf.getvalue()


def _platform(os_name: str, architecture: str, variant: str | None) -> dict[str, str]:
    platform = {"architecture": architecture, "os": os_name}
    if variant:
        platform["variant"] = variant
    return platform


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class File:
    """A regular file in a layer with an explicit mode (``0o755`` for an executable).

    A plain ``bytes``/``str`` value is the same as ``File(value, mode=0o644)``
    and gives the same tar bytes. ``str`` content is UTF-8 encoded. Owner is
    always 0:0 and mtime 0, as for every entry. Raises TypeError or
    ValueError for other content or a mode outside ``0o0..0o7777``.

    Example::

        builder.image(files={"usr/bin/tool": File(b"#!/bin/sh", mode=0o755)})
    """

    content: bytes | str
    mode: int = _FILE_MODE

    def __post_init__(self) -> None:
        if not isinstance(self.content, bytes | str):
            raise TypeError(f"File content must be bytes or str, not {type(self.content)}")
        if not 0 <= self.mode <= 0o7777:
            raise ValueError(f"File mode must be within 0o0..0o7777, not {self.mode:#o}")


@dataclass(frozen=True)
class Symlink:
    """A symbolic link in a layer pointing at ``target`` (relative or absolute).

    The target is stored as given and never checked against the layer.

    Example::

        builder.image(files={"bin/busybox": File(busybox, 0o755), "bin/sh": Symlink("busybox")})
    """

    target: str

    def __post_init__(self) -> None:
        if not self.target or "\0" in self.target:
            raise ValueError(f"invalid symlink target {self.target!r}")


#: What a layer file map may hold for one path.
LayerEntry = bytes | str | File | Symlink
#: A layer's files: image path -> content (see :meth:`LayoutBuilder.layer`).
LayerFiles = Mapping[str, LayerEntry]


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
            _atomic_write(path, data)
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
        tar = _tar_bytes(files)
        media_type = DOCKER_LAYER if self._docker(docker) else OCI_LAYER_GZIP
        return self.blob(_gzip_bytes(tar), media_type), sha256_digest(tar)

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
            blob = self.blob(_as_bytes(data), media_type)
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
        _atomic_write(
            self.root / "oci-layout", canonical_json({"imageLayoutVersion": LAYOUT_VERSION})
        )
        _atomic_write(self.root / "index.json", canonical_json(self.index_json()))
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
