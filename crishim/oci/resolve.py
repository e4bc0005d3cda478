"""From an image's top descriptor to an :class:`~crishim.model.ImageRecord`, over any blob store.

An *entry* is what names an image in a store: an ``index.json`` entry of
an OCI layout, or a containerd image record (its name and target
descriptor, given the same shape). :meth:`Resolver.resolve` turns an entry
into an :class:`EntryResult`: the record, or the reason it cannot be
served, and the closure of blobs the entry keeps alive. Blobs come from a
:class:`BlobReader` (files of a layout, containerd's content service).

Checks made on every entry (a failing entry is reported, never raised):

* manifest, index and config blobs are read, their size and digest checked
  against the descriptor, and parsed as JSON objects of at most 4 MiB;
* media types must be OCI or Docker schema-2 manifests/indexes, and the
  config a container image config; an iSulad embedded manifest or a Docker
  schema-1 manifest is not refused here but carried as a record without
  config (ID: the manifest digest, ``manifest_media_type`` saying what it
  is), so filters (``embedded-filter``) can hide it and say why;
* an index is resolved to the configured platform (nested at most twice);
* layer blobs must exist with the size their descriptor gives (they are
  not hashed: that would read every layer at every start);
* a digest must be ``sha256:<64 hex>`` or ``sha512:<128 hex>``.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from crishim import reference
from crishim.model import NO_ANNOTATIONS, ImageRecord, Platform
from crishim.oci.names import EntryKey, entry_key, entry_names
from crishim.oci.spec import (
    CONFIG_TYPES,
    CONFIGLESS_TYPES,
    EMBEDDED_MANIFEST,
    INDEX_TYPES,
    MANIFEST_TYPES,
    MAX_JSON_BLOB,
    InvalidContent,
    artifact_type,
    choose_platform,
    descriptor_fields,
    is_valid_digest,
    json_object,
)

__all__ = [
    "BlobReader",
    "BrokenEntry",
    "EntryKey",
    "EntryResult",
    "MissingBlob",
    "Resolver",
    "UnreadableBlob",
    "entry_key",
]

_JSON_CACHE_SIZE = 512


class BrokenEntry(Exception):
    """An entry (or the store) cannot be served; the message says why."""


class MissingBlob(BrokenEntry):
    """A :class:`BlobReader` has no such blob."""


class UnreadableBlob(BrokenEntry):
    """A :class:`BlobReader` cannot read the blob; the message gives the reason only."""


@dataclass(frozen=True, slots=True)
class EntryResult:
    """What one entry gives."""

    key: EntryKey
    record: ImageRecord | None
    problem: str = ""
    #: Blob digests this entry keeps alive.
    closure: tuple[str, ...] = ()
    #: False when part of the closure could not be read: GC then keeps everything.
    complete: bool = True


class BlobReader(Protocol):
    """Where a resolver reads blobs.

    A missing blob raises :class:`MissingBlob`, one that cannot be read
    :class:`UnreadableBlob` (with the reason); any other :class:`BrokenEntry`
    is reported as it is.
    """

    #: Where the images come from, as records report it (a path, an address).
    source: str

    def read_blob(self, digest: str, limit: int) -> bytes:
        """The blob's bytes, at most ``limit`` of them; BrokenEntry when missing."""
        ...

    def blob_size(self, digest: str) -> int:
        """The stored blob's size; BrokenEntry when it is missing."""
        ...


def _annotations(manifest: Mapping[str, Any]) -> Mapping[str, str]:
    """A manifest's annotations as strings (the shared empty mapping when it has none)."""
    annotations = manifest.get("annotations")
    if isinstance(annotations, dict) and annotations:
        return {str(k): str(v) for k, v in annotations.items()}
    return NO_ANNOTATIONS


class Resolver:
    """Resolves entries to records for one platform, reading through a BlobReader.

    ``repository`` completes bare-tag and digest-only ``ref.name``
    annotations. With ``tag_digests`` (OCI layouts), a name given by tag
    also gives the image the digest ``name@<entry digest>``; without it
    (containerd, whose CRI reports digests only for names that carry one),
    it does not. With ``artifacts``, an entry holding an OCI artifact is
    served as one (see :meth:`_artifact_record`); without, it is refused.
    """

    def __init__(
        self,
        reader: BlobReader,
        platform: Platform,
        repository: str = "",
        *,
        tag_digests: bool = True,
        extra: Mapping[str, str] | None = None,
        artifacts: bool = False,
    ) -> None:
        self.reader = reader
        self.platform = platform
        self.repository = repository
        self.tag_digests = tag_digests
        self.extra = dict(extra or {})
        self.artifacts = artifacts
        # layer sizes seen since the last clear(): shared layers are checked once
        self._layer_sizes: dict[str, int] = {}
        # Parsed JSON blobs since the last clear(); bounded, as entries naming
        # one manifest are usually close together.
        self._json: dict[str, tuple[dict[str, Any], bytes]] = {}

    def clear(self) -> None:
        """Forget cached blobs (call after a scan: the store may change)."""
        self._json.clear()
        self._layer_sizes.clear()

    # -- blobs -----------------------------------------------------------

    @staticmethod
    def _descriptor(descriptor: Mapping[str, Any], what: str) -> tuple[str, int]:
        """(digest, size) of a descriptor; the digest grammar keeps paths inside blobs/."""
        try:
            digest, size, _ = descriptor_fields(descriptor, what)
        except InvalidContent as exc:
            raise BrokenEntry(str(exc)) from None
        return digest, size

    def read_json(self, descriptor: Mapping[str, Any], what: str) -> tuple[dict[str, Any], bytes]:
        """(parsed, raw bytes) of a JSON blob, checked against its descriptor."""
        digest, size = self._descriptor(descriptor, what)
        cached = self._json.get(digest)
        if cached is not None:
            if len(cached[1]) != size:
                raise BrokenEntry(
                    f"{what} blob {digest} is {len(cached[1])} bytes, descriptor says {size}"
                )
            return cached
        if size > MAX_JSON_BLOB:
            raise BrokenEntry(
                f"{what} {digest}: {size} bytes is over the {MAX_JSON_BLOB}-byte limit"
            )
        try:
            data = self.reader.read_blob(digest, size + 1)
        except MissingBlob:
            raise BrokenEntry(f"{what} blob {digest} is missing") from None
        except UnreadableBlob as exc:
            raise BrokenEntry(f"{what} blob {digest} cannot be read: {exc}") from None
        if len(data) != size:
            shown = f"{len(data)}" if len(data) <= size else f"more than {size}"
            raise BrokenEntry(f"{what} blob {digest} is {shown} bytes, descriptor says {size}")
        algorithm, _, expected = digest.partition(":")
        if hashlib.new(algorithm, data).hexdigest() != expected:
            raise BrokenEntry(f"{what} blob {digest} does not match its digest")
        try:
            parsed = json_object(data, f"{what} blob {digest}")
        except InvalidContent as exc:
            raise BrokenEntry(str(exc)) from None
        if len(self._json) >= _JSON_CACHE_SIZE:
            self._json.clear()
        self._json[digest] = (parsed, data)
        return parsed, data

    def check_layer(self, descriptor: Mapping[str, Any], what: str = "layer") -> int:
        """The blob's size, once it is found stored with the size its descriptor gives."""
        digest, size = self._descriptor(descriptor, what)
        actual = self._layer_sizes.get(digest)
        if actual is None:
            try:
                actual = self.reader.blob_size(digest)
            except MissingBlob:
                raise BrokenEntry(f"{what} blob {digest} is missing") from None
            except UnreadableBlob as exc:
                raise BrokenEntry(f"{what} blob {digest} cannot be read: {exc}") from None
            self._layer_sizes[digest] = actual
        if actual != size:
            raise BrokenEntry(f"{what} blob {digest} is {actual} bytes, descriptor says {size}")
        return size

    # -- names -----------------------------------------------------------

    def names(self, entry: Mapping[str, Any]) -> list[reference.Reference]:
        """The normalised names an entry gives its image (see :func:`entry_names`)."""
        try:
            return entry_names(entry, self.repository)
        except InvalidContent as exc:
            raise BrokenEntry(str(exc)) from None

    # -- resolution ------------------------------------------------------

    @staticmethod
    def _media_type(descriptor: Mapping[str, Any], blob: Mapping[str, Any] | None) -> str:
        media_type = descriptor.get("mediaType")
        if not media_type and blob is not None:
            media_type = blob.get("mediaType")
        return media_type if isinstance(media_type, str) else ""

    def resolve(self, entry: Mapping[str, Any]) -> EntryResult:
        """The record (or problem) and blob closure of one entry."""
        key = entry_key(entry)
        closure: dict[str, None] = {}
        digest = entry.get("digest")
        if isinstance(digest, str) and is_valid_digest(digest):
            closure[digest] = None
        try:
            record = self._record(entry, closure)
        except BrokenEntry as exc:
            return EntryResult(key, None, str(exc), tuple(closure), complete=False)
        except Exception as exc:  # whatever an entry holds costs that entry only
            problem = f"cannot be read ({type(exc).__name__})"
            return EntryResult(key, None, problem, tuple(closure), complete=False)
        try:
            complete = self._complete_closure(entry, closure)
        except Exception:
            complete = False
        # interned: the digests of shared layers are one object for all images
        return EntryResult(key, record, "", tuple(sys.intern(d) for d in closure), complete)

    def _digests(self, names: list[reference.Reference], entry_digest: str) -> tuple[str, ...]:
        if self.tag_digests:
            found = (f"{r.repository}@{r.digest or entry_digest}" for r in names)
        else:
            found = (f"{r.repository}@{r.digest}" for r in names if r.digest)
        return tuple(dict.fromkeys(found))

    def _record(self, entry: Mapping[str, Any], closure: dict[str, None]) -> ImageRecord:
        names = self.names(entry)
        manifest_desc, manifest = self._resolve_manifest(entry, closure, 0)
        media_type = self._media_type(manifest_desc, manifest)
        if media_type in CONFIGLESS_TYPES:
            return self._configless_record(entry, names, manifest_desc, manifest, media_type)
        config_desc = manifest.get("config")
        if not isinstance(config_desc, dict):
            raise BrokenEntry("manifest has no config descriptor")
        kind = artifact_type(media_type, manifest)
        if kind:
            if not self.artifacts:
                raise BrokenEntry(
                    f"an OCI artifact ({kind[:100]}), not a container image; this backend "
                    "serves container images only"
                )
            return self._artifact_record(entry, names, manifest_desc, manifest, kind, closure)
        config_type = config_desc.get("mediaType", "")
        if config_type not in CONFIG_TYPES:
            raise BrokenEntry(f"config media type {config_type!r} is not a container image config")
        config, config_bytes = self.read_json(config_desc, "config")
        closure[str(config_desc["digest"])] = None
        size = int(manifest_desc.get("size", 0)) + int(config_desc["size"])
        size += self._layers(manifest, closure)
        inner = config.get("config")
        user = inner.get("User", "") if isinstance(inner, dict) else ""
        entry_digest = str(entry["digest"])
        return ImageRecord(
            id=sys.intern(str(config_desc["digest"])),
            repo_tags=tuple(r.tagged() for r in names if r.tag),
            repo_digests=self._digests(names, entry_digest),
            size=size,
            user=user if isinstance(user, str) else "",
            annotations=_annotations(manifest),
            config=config_bytes,
            # chain_id is left to verbose ImageStatus, which derives it from
            # the config: 71 bytes a record saved at 100,000 images
            source=self.reader.source,
            manifest_digest=sys.intern(str(manifest_desc.get("digest", ""))),
            manifest_media_type=sys.intern(self._media_type(manifest_desc, manifest)),
            extra=self.extra or NO_ANNOTATIONS,
        )

    def _layers(self, manifest: Mapping[str, Any], closure: dict[str, None]) -> int:
        """The stored size of a manifest's layers, each checked and added to ``closure``."""
        layers = manifest.get("layers")
        if not isinstance(layers, list):
            raise BrokenEntry("manifest has no layers list")
        size = 0
        for layer in layers:
            if not isinstance(layer, dict):
                raise BrokenEntry("manifest has a malformed layer descriptor")
            size += self.check_layer(layer)
            closure[str(layer["digest"])] = None
        return size

    def _artifact_record(
        self,
        entry: Mapping[str, Any],
        names: list[reference.Reference],
        manifest_desc: Mapping[str, Any],
        manifest: Mapping[str, Any],
        kind: str,
        closure: dict[str, None],
    ) -> ImageRecord:
        """An OCI artifact: served, but not as a runnable image.

        Its ID is the manifest digest (artifacts sharing the empty config
        would otherwise share an ID), its size that of the manifest, the
        config and the layers as stored, as for images; its config is not
        an image config, so the record has none (and no user). The config
        and layer blobs must be there with their sizes (not hashed).
        """
        config_desc = manifest["config"]
        size = int(manifest_desc.get("size", 0)) + self.check_layer(config_desc, "config")
        closure[str(config_desc["digest"])] = None
        size += self._layers(manifest, closure)
        digest = sys.intern(str(manifest_desc["digest"]))
        return ImageRecord(
            id=digest,
            repo_tags=tuple(r.tagged() for r in names if r.tag),
            repo_digests=self._digests(names, str(entry["digest"])),
            size=size,
            annotations=_annotations(manifest),
            source=self.reader.source,
            manifest_digest=digest,
            manifest_media_type=sys.intern(self._media_type(manifest_desc, manifest)),
            extra=self.extra or NO_ANNOTATIONS,
            artifact_type=sys.intern(kind),
        )

    def _configless_record(
        self,
        entry: Mapping[str, Any],
        names: list[reference.Reference],
        manifest_desc: Mapping[str, Any],
        manifest: Mapping[str, Any],
        media_type: str,
    ) -> ImageRecord:
        """An embedded or schema-1 image: no config, so not an OCI image.

        Its ID is the manifest digest and its config empty; an embedded
        manifest without name annotations is named by its ``image_name``.
        """
        entry_digest = str(entry["digest"])
        size = int(manifest_desc.get("size", 0))
        extra = {**self.extra, "layout": self.reader.source, "indexEntry": entry_digest}
        if media_type == EMBEDDED_MANIFEST:
            layers = manifest.get("layers")
            for layer in layers if isinstance(layers, list) else ():
                layer_size = layer.get("size") if isinstance(layer, dict) else None
                if isinstance(layer_size, int) and not isinstance(layer_size, bool):
                    size += max(layer_size, 0)
            image_name = manifest.get("image_name")
            if isinstance(image_name, str):
                extra["imageName"] = image_name
                if not names:
                    try:
                        ref = reference.parse(image_name)
                    except reference.ReferenceError:
                        ref = None
                    if ref is not None and ref.kind is reference.RefKind.NAME:
                        names = [ref]
        return ImageRecord(
            id=str(manifest_desc["digest"]),
            repo_tags=tuple(r.tagged() for r in names if r.tag),
            repo_digests=self._digests(names, entry_digest),
            size=size,
            source=self.reader.source,
            manifest_digest=str(manifest_desc["digest"]),
            manifest_media_type=media_type,
            extra=extra,
        )

    def _resolve_manifest(
        self, descriptor: Mapping[str, Any], closure: dict[str, None], depth: int
    ) -> tuple[Mapping[str, Any], dict[str, Any]]:
        blob, _ = self.read_json(descriptor, "manifest")
        closure[str(descriptor["digest"])] = None
        media_type = self._media_type(descriptor, blob)
        if media_type in MANIFEST_TYPES or media_type in CONFIGLESS_TYPES:
            return descriptor, blob
        if media_type not in INDEX_TYPES:
            raise BrokenEntry(f"unsupported media type {media_type or '(none)'!r}")
        if depth >= 2:
            raise BrokenEntry("image indexes nested too deep")
        manifests = blob.get("manifests")
        if not isinstance(manifests, list):
            raise BrokenEntry("image index has no manifests list")
        chosen = choose_platform(manifests, self.platform)
        if chosen is None:
            raise BrokenEntry(f"no manifest for platform {self.platform}")
        return self._resolve_manifest(manifests[chosen], closure, depth + 1)

    def _complete_closure(self, entry: Mapping[str, Any], closure: dict[str, None]) -> bool:
        """Add the blobs of the other platforms of an index to ``closure``."""
        stack: list[tuple[Mapping[str, Any], int]] = [(entry, 0)]
        complete = True
        while stack:
            descriptor, depth = stack.pop()
            try:
                blob, _ = self.read_json(descriptor, "manifest")
            except BrokenEntry:
                complete = False
                continue
            closure[str(descriptor["digest"])] = None
            media_type = self._media_type(descriptor, blob)
            if media_type in CONFIGLESS_TYPES:
                # embedded layers are host paths; schema 1 names blobs in fsLayers
                for layer in blob.get("fsLayers") or ():
                    blob_sum = layer.get("blobSum") if isinstance(layer, dict) else None
                    if isinstance(blob_sum, str) and is_valid_digest(blob_sum):
                        closure[blob_sum] = None
                continue
            if media_type in INDEX_TYPES:
                children = blob.get("manifests")
                if depth < 2 and isinstance(children, list):
                    stack.extend((c, depth + 1) for c in children if isinstance(c, dict))
                continue
            for child in (blob.get("config"), *(blob.get("layers") or ())):
                if isinstance(child, dict) and isinstance(child.get("digest"), str):
                    if is_valid_digest(child["digest"]):
                        closure[child["digest"]] = None
                    else:
                        complete = False
        return complete
