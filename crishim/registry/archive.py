"""Images from files, for ``crishim import``: OCI layouts and ``docker save`` archives.

:func:`open_archive` reads what a path holds and gives one
:class:`ArchiveImage` per image it names, each with an :class:`ImageSource`
the shared :class:`~crishim.registry.puller.Puller` pulls from, exactly as
it pulls from a registry (platform choice, verification while streaming,
the backend's own commit). Three forms are read:

* an OCI image layout, as a directory or a tar file (``ctr images export``,
  ``skopeo copy oci-archive:``, ``docker save`` since Docker 25): every
  ``index.json`` entry, named by its ``io.containerd.image.name`` or
  ``org.opencontainers.image.ref.name`` annotation;
* a legacy ``docker save`` archive (``manifest.json`` listing ``Config``,
  ``RepoTags`` and ``Layers``): its Docker schema-2 manifest is written
  here, from the config and the layers, named by ``RepoTags``.

Nothing is extracted to disk and only regular members are read. Every
digest is checked: manifests and indexes when read, blobs as they stream
into the backend's store, a legacy config against its file name and
legacy layers against the config's ``rootfs.diff_ids``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crishim import reference
from crishim.errors import DataLoss
from crishim.oci.spec import (
    CONTAINERD_NAME,
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    MAX_JSON_BLOB,
    REF_NAME,
    InvalidContent,
    blob_path,
    digest_of,
    is_valid_digest,
    json_object,
    parse_json,
)
from crishim.reference import Reference

from .client import ByteSink, Deadline, Fetched
from .files import ArchiveError, DirectoryFiles, Files, TarFiles

__all__ = ["Archive", "ArchiveError", "ArchiveImage", "ArchiveSource", "open_archive"]

CHUNK = 1024 * 1024


def _read_small(files: Files, name: str, what: str) -> bytes:
    stream, size = files.open(name)
    with stream:
        if size > MAX_JSON_BLOB:
            raise ArchiveError(f"{files.origin}: {what} {name} is over {MAX_JSON_BLOB} bytes")
        return stream.read(MAX_JSON_BLOB + 1)


def _json(data: bytes, what: str) -> Any:
    try:
        return parse_json(data, what)
    except InvalidContent as exc:
        raise ArchiveError(str(exc)) from None


@dataclass
class ArchiveSource:
    """An :class:`~crishim.registry.puller.ImageSource` over one image of an archive.

    ``blobs`` maps digests to member names; ``memory`` holds documents
    written here (a legacy archive's manifest).
    """

    files: Files
    top: Mapping[str, Any]
    deadline: Deadline
    blobs: Callable[[str], str]
    memory: dict[str, tuple[str, bytes]] = field(default_factory=dict)

    @property
    def origin(self) -> str:
        return self.files.origin

    def where(self) -> str:
        return f"{self.deadline.what}: {self.files.origin}"

    def _document(self, digest: str, media_type: str) -> Fetched:
        if digest in self.memory:
            kind, data = self.memory[digest]
            return Fetched(digest, kind, data, self.origin)
        data = _read_small(self.files, self.blobs(digest), "manifest")
        actual = digest_of(data, digest.partition(":")[0])
        if actual != digest:
            raise DataLoss(f"{self.where()}: manifest {digest} has digest {actual}")
        if not media_type:
            try:
                parsed = json_object(data, f"{self.where()}: manifest {digest}")
            except InvalidContent as exc:
                raise DataLoss(str(exc)) from None
            inner = parsed.get("mediaType")
            media_type = inner if isinstance(inner, str) else ""
        return Fetched(digest, media_type, data, self.origin)

    def resolve(self, reference: str, expected: str | None) -> Fetched:
        media_type = self.top.get("mediaType")
        return self._document(
            str(self.top["digest"]), media_type if isinstance(media_type, str) else ""
        )

    def manifest(self, digest: str) -> Fetched:
        return self._document(digest, "")

    def blob(
        self, digest: str, writer: ByteSink, on_bytes: Callable[[int], None] | None = None
    ) -> None:
        stream, _ = self.files.open(self.blobs(digest))
        with stream:
            while chunk := stream.read(CHUNK):
                self.deadline.check()
                writer.write(chunk)
                if on_bytes is not None:
                    on_bytes(len(chunk))


@dataclass(frozen=True)
class ArchiveImage:
    """One image an archive names, and how to pull it from the archive."""

    #: The names the archive gives it (may be empty: ``--name`` must name it).
    names: tuple[Reference, ...]
    #: The digest of what it names (a manifest or an index).
    digest: str
    source: Callable[[Deadline], ArchiveSource]


class Archive:
    """What a path holds; close it when done (``with open_archive(path) as archive``)."""

    def __init__(self, files: Files, images: Sequence[ArchiveImage]) -> None:
        self.files = files
        self.images = tuple(images)

    def close(self) -> None:
        if isinstance(self.files, TarFiles):
            self.files.close()


@contextlib.contextmanager
def open_archive(path: Path) -> Iterator[Archive]:
    """The images an OCI layout (directory or tar) or a ``docker save`` archive holds."""
    files: Files
    if path.is_dir():
        files = DirectoryFiles(path)
    elif path.is_file():
        files = TarFiles(path)
    else:
        raise ArchiveError(f"{path} is neither a file nor a directory")
    try:
        images = _images(files)
        archive = Archive(files, images)
        yield archive
    finally:
        if isinstance(files, TarFiles):
            files.close()


def _images(files: Files) -> list[ArchiveImage]:
    try:
        index = _read_small(files, "index.json", "index")
    except ArchiveError:
        index = None
    if index is not None:
        return _oci_images(files, index)
    try:
        manifest = _read_small(files, "manifest.json", "manifest list")
    except ArchiveError:
        raise ArchiveError(
            f"{files.origin} holds neither an OCI layout (index.json) nor a docker save "
            "archive (manifest.json)"
        ) from None
    return _docker_images(files, manifest)


def _blob_name(digest: str) -> str:
    try:
        return blob_path(digest)
    except InvalidContent as exc:
        raise DataLoss(str(exc)) from None


def _oci_images(files: Files, data: bytes) -> list[ArchiveImage]:
    index = _json(data, f"{files.origin}: index.json")
    manifests = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(manifests, list):
        raise ArchiveError(f"{files.origin}: index.json has no manifests list")
    out: list[ArchiveImage] = []
    for i, entry in enumerate(manifests):
        if not isinstance(entry, dict) or not isinstance(entry.get("digest"), str):
            raise ArchiveError(f"{files.origin}: index.json entry {i} is not a descriptor")
        digest = entry["digest"]
        if not is_valid_digest(digest):
            raise ArchiveError(f"{files.origin}: index.json entry {i} has digest {digest!r}")
        names = _entry_names(entry, f"{files.origin}: index.json entry {i}")

        def source(deadline: Deadline, entry: Mapping[str, Any] = entry) -> ArchiveSource:
            return ArchiveSource(files, entry, deadline, _blob_name)

        out.append(ArchiveImage(names, digest, source))
    return _merged(out)


def _entry_names(entry: Mapping[str, Any], what: str) -> tuple[Reference, ...]:
    """The name an index.json entry gives: containerd's full name, else ``ref.name``.

    A ``ref.name`` that is a bare tag (``1.0``, ``latest``) names no
    repository: only ``--name`` can name such an image.
    """
    annotations = entry.get("annotations")
    if not isinstance(annotations, dict):
        return ()
    value = annotations.get(CONTAINERD_NAME)
    if not isinstance(value, str) or not value:
        value = annotations.get(REF_NAME)
        if not isinstance(value, str) or not value or not ("/" in value or ":" in value):
            return ()
    try:
        ref = reference.parse(value)
    except reference.ReferenceError as exc:
        raise ArchiveError(f"{what}: name {value!r}: {exc}") from None
    return (ref,) if ref.kind is reference.RefKind.NAME else ()


def _merged(images: list[ArchiveImage]) -> list[ArchiveImage]:
    """One image per digest, with the names of all its entries."""
    by_digest: dict[str, ArchiveImage] = {}
    for image in images:
        seen = by_digest.get(image.digest)
        if seen is None:
            by_digest[image.digest] = image
        else:
            names = tuple(dict.fromkeys((*seen.names, *image.names)))
            by_digest[image.digest] = ArchiveImage(names, seen.digest, seen.source)
    return list(by_digest.values())


def _docker_images(files: Files, data: bytes) -> list[ArchiveImage]:
    listing = _json(data, f"{files.origin}: manifest.json")
    if not isinstance(listing, list):
        raise ArchiveError(f"{files.origin}: manifest.json is not a list")
    out: list[ArchiveImage] = []
    for i, item in enumerate(listing):
        what = f"{files.origin}: manifest.json entry {i}"
        if not isinstance(item, dict):
            raise ArchiveError(f"{what} is not an object")
        config_name, layer_names = item.get("Config"), item.get("Layers")
        if not isinstance(config_name, str) or not isinstance(layer_names, list):
            raise ArchiveError(f"{what} has no Config and Layers")
        if not all(isinstance(n, str) for n in layer_names):
            raise ArchiveError(f"{what}: Layers holds something other than file names")
        config = _read_small(files, config_name, "config")
        config_digest = digest_of(config)
        stem = Path(config_name).name.removesuffix(".json")
        if len(stem) == 64 and f"sha256:{stem}" != config_digest:
            raise DataLoss(f"{what}: config {config_name} has digest {config_digest}")
        parsed = _json(config, f"{what}: config")
        rootfs = parsed.get("rootfs") if isinstance(parsed, dict) else None
        diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
        if not isinstance(diff_ids, list) or len(diff_ids) != len(layer_names):
            raise ArchiveError(f"{what}: the config's rootfs.diff_ids do not match Layers")
        blobs: dict[str, str] = {config_digest: config_name}
        layers = []
        for name, diff_id in zip(layer_names, diff_ids, strict=True):
            digest, size, media_type = _layer(files, name, diff_id, what)
            blobs[digest] = name
            layers.append({"mediaType": media_type, "digest": digest, "size": size})
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": DOCKER_MANIFEST,
                "config": {
                    "mediaType": DOCKER_CONFIG,
                    "digest": config_digest,
                    "size": len(config),
                },
                "layers": layers,
            },
            separators=(",", ":"),
        ).encode()
        manifest_digest = digest_of(manifest)
        top = {"mediaType": DOCKER_MANIFEST, "digest": manifest_digest, "size": len(manifest)}
        names = []
        for tag in item.get("RepoTags") or ():
            try:
                ref = reference.parse(str(tag))
            except reference.ReferenceError as exc:
                raise ArchiveError(f"{what}: RepoTags {tag!r}: {exc}") from None
            if ref.kind is reference.RefKind.NAME:
                names.append(ref)

        def source(
            deadline: Deadline,
            top: Mapping[str, Any] = top,
            blobs: Mapping[str, str] = blobs,
            manifest: bytes = manifest,
        ) -> ArchiveSource:
            def lookup(wanted: str) -> str:
                found = blobs.get(wanted)
                if found is None:
                    raise ArchiveError(f"{files.origin}: no file for {wanted}")
                return found

            return ArchiveSource(
                files,
                top,
                deadline,
                lookup,
                memory={str(top["digest"]): (DOCKER_MANIFEST, manifest)},
            )

        out.append(ArchiveImage(tuple(names), manifest_digest, source))
    return _merged(out)


def _layer(files: Files, name: str, diff_id: object, what: str) -> tuple[str, int, str]:
    """(digest, size, media type) of a legacy layer file.

    An uncompressed layer's digest is its diff ID (checked as it streams);
    a compressed one is hashed here once.
    """
    stream, size = files.open(name)
    with stream:
        magic = stream.read(2)
        if magic != b"\x1f\x8b":
            if not isinstance(diff_id, str) or not is_valid_digest(diff_id):
                raise ArchiveError(f"{what}: diff ID {diff_id!r} of {name} is not a digest")
            return diff_id, size, DOCKER_LAYER
        h = hashlib.sha256(magic)
        while chunk := stream.read(CHUNK):
            h.update(chunk)
    return f"sha256:{h.hexdigest()}", size, DOCKER_LAYER_GZIP
