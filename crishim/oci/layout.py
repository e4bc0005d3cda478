"""Reading and editing an OCI image layout.

Reading: each ``index.json`` entry becomes an :class:`EntryResult`: the
image record (or the reason it cannot be served) and the closure of blobs
the entry keeps alive. Results are keyed by the entry's digest and name
annotations; blobs are content-addressed, so a result stays valid as long
as its entry is in ``index.json``, and a re-scan reuses the results of the
entries it has seen before (incremental re-indexing).

Checks made on every entry (a failing entry is reported and skipped; the
rest of the layout still serves):

* manifest, index and config blobs are read, their size and digest checked
  against the descriptor, and parsed as JSON objects of at most 4 MiB;
* media types must be OCI or Docker schema-2 manifests/indexes, and the
  config a container image config; an iSulad embedded manifest
  (``application/embedded.manifest+json``) or a Docker schema-1 manifest is
  not refused here but carried as a record without config (ID: the
  manifest digest, ``manifest_media_type`` saying what it is), so filters
  (``embedded-filter``) can hide it and say why;
* an index is resolved to the configured platform;
* layer blobs must exist with the size their descriptor gives (they are
  not hashed: that would read every layer at every start);
* a digest must be ``sha256:<64 hex>`` or ``sha512:<128 hex>``, so it can
  only name a file under ``blobs/``; a blob that is a symlink leading out
  of ``blobs/`` is refused.

Editing: :meth:`Layout.remove_entries` rewrites ``index.json`` atomically;
:meth:`Layout.delete_blobs` removes blobs no remaining entry references.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import stat
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crishim import reference
from crishim.model import NO_ANNOTATIONS, FilesystemUsage, ImageRecord, Platform
from crishim.oci.atomic import atomic_write, fsync_dir, stale_temp_files

log = logging.getLogger(__name__)

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
CONFIG_TYPES = frozenset({OCI_CONFIG, DOCKER_CONFIG})
EMBEDDED_MANIFEST = "application/embedded.manifest+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
#: Manifests without a config descriptor: not OCI images, carried for the filters.
CONFIGLESS_TYPES = frozenset({EMBEDDED_MANIFEST, DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED})

REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"

#: Manifests and configs larger than this are refused (the distribution
#: spec suggests registries accept manifests up to 4 MiB).
MAX_JSON_BLOB = 4 * 1024 * 1024

_JSON_CACHE_SIZE = 512
_DIGEST_RE = re.compile(r"^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$")
_BARE_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")

#: (entry digest, io.containerd.image.name, org.opencontainers.image.ref.name)
EntryKey = tuple[str, str, str]


class BrokenEntry(Exception):
    """An index entry (or the layout) cannot be served; the message says why."""


@dataclass(frozen=True, slots=True)
class EntryResult:
    """What one ``index.json`` entry gives."""

    key: EntryKey
    record: ImageRecord | None
    problem: str = ""
    #: Blob digests this entry keeps alive.
    closure: tuple[str, ...] = ()
    #: False when part of the closure could not be read: GC then keeps everything.
    complete: bool = True


@dataclass(frozen=True, slots=True)
class Scan:
    results: tuple[EntryResult, ...]
    index_sha256: str
    reused: int


def chain_id(diff_ids: list[str]) -> str:
    """The OCI ChainID of a layer stack (empty for no layers)."""
    if not diff_ids:
        return ""
    chain = diff_ids[0]
    for diff_id in diff_ids[1:]:
        chain = "sha256:" + hashlib.sha256(f"{chain} {diff_id}".encode()).hexdigest()
    return chain


def file_identity(path: Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime_ns) of a file, or None: what tells a changed index.json."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def entry_key(entry: Mapping[str, Any]) -> EntryKey:
    annotations = entry.get("annotations")
    if not isinstance(annotations, dict):
        annotations = {}
    return (
        sys.intern(str(entry.get("digest", ""))),
        str(annotations.get(CONTAINERD_NAME, "")),
        str(annotations.get(REF_NAME, "")),
    )


class Layout:
    """One OCI image-layout directory."""

    def __init__(self, root: Path, platform: Platform, repository: str = "") -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.index_path = root / "index.json"
        self.platform = platform
        self.repository = repository
        self.source = sys.intern(str(root))
        self._blobs_dir = str(self.blobs)
        # layer sizes seen in the current scan: shared layers are stat-ed once
        self._layer_sizes: dict[str, int] = {}
        # Parsed JSON blobs of the current scan; bounded, as entries naming
        # one manifest are usually close together in index.json.
        self._json: dict[str, tuple[dict[str, Any], bytes]] = {}

    # -- blobs -----------------------------------------------------------

    def blob_path(self, digest: object) -> Path:
        return Path(self._blob_file(digest))

    def _blob_file(self, digest: object) -> str:
        # The digest grammar (hex only) is what keeps paths inside blobs/.
        if not isinstance(digest, str) or not _DIGEST_RE.match(digest):
            raise BrokenEntry(f"invalid digest {digest!r}")
        algorithm, _, hexpart = digest.partition(":")
        return f"{self._blobs_dir}/{algorithm}/{hexpart}"

    def _check_inside(self, path: str) -> None:
        real = os.path.realpath(path)
        if not real.startswith(os.path.realpath(self._blobs_dir) + os.sep):
            raise BrokenEntry(f"blob {os.path.basename(path)} resolves outside blobs/")

    def _open_blob(self, path: str) -> int:
        """A file descriptor for a blob; a symlink must stay inside blobs/."""
        try:
            return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
        self._check_inside(path)
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)

    def read_json(self, descriptor: Mapping[str, Any], what: str) -> tuple[dict[str, Any], bytes]:
        """(parsed, raw bytes) of a JSON blob, checked against its descriptor."""
        digest = descriptor.get("digest")
        path = self._blob_file(digest)
        assert isinstance(digest, str)
        size = descriptor.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BrokenEntry(f"{what} {digest}: invalid size {size!r}")
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
            fd = self._open_blob(path)
            try:
                data = os.read(fd, size + 1)
            finally:
                os.close(fd)
        except FileNotFoundError:
            raise BrokenEntry(f"{what} blob {digest} is missing") from None
        except OSError as exc:
            raise BrokenEntry(f"{what} blob {digest} cannot be read: {exc.strerror}") from None
        if len(data) != size:
            shown = f"{len(data)}" if len(data) <= size else f"more than {size}"
            raise BrokenEntry(f"{what} blob {digest} is {shown} bytes, descriptor says {size}")
        algorithm, _, expected = digest.partition(":")
        if hashlib.new(algorithm, data).hexdigest() != expected:
            raise BrokenEntry(f"{what} blob {digest} does not match its digest")
        try:
            parsed = json.loads(data)
        except ValueError as exc:
            raise BrokenEntry(f"{what} blob {digest} is not valid JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise BrokenEntry(f"{what} blob {digest} is not a JSON object")
        if len(self._json) >= _JSON_CACHE_SIZE:
            self._json.clear()
        self._json[digest] = (parsed, data)
        return parsed, data

    def check_layer(self, descriptor: Mapping[str, Any]) -> int:
        digest = descriptor.get("digest")
        size = descriptor.get("size")
        path = self._blob_file(digest)
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BrokenEntry(f"layer {digest}: invalid size {size!r}")
        actual = self._layer_sizes.get(path)
        if actual is None:
            try:
                st = os.lstat(path)
                if stat.S_ISLNK(st.st_mode):
                    self._check_inside(path)
                    st = os.stat(path)
            except FileNotFoundError:
                raise BrokenEntry(f"layer blob {digest} is missing") from None
            actual = st.st_size
            self._layer_sizes[path] = actual
        if actual != size:
            raise BrokenEntry(f"layer blob {digest} is {actual} bytes, descriptor says {size}")
        return size

    # -- index.json ------------------------------------------------------

    def check_marker(self) -> None:
        try:
            marker = json.loads((self.root / "oci-layout").read_bytes())
        except FileNotFoundError:
            raise BrokenEntry(
                f"{self.root} is not an OCI image layout: oci-layout is missing"
            ) from None
        except ValueError as exc:
            raise BrokenEntry(f"{self.root}/oci-layout is not valid JSON: {exc}") from None
        if not isinstance(marker, dict) or "imageLayoutVersion" not in marker:
            raise BrokenEntry(f"{self.root}/oci-layout has no imageLayoutVersion")

    def read_index_bytes(self) -> bytes:
        try:
            return self.index_path.read_bytes()
        except FileNotFoundError:
            raise BrokenEntry(f"{self.index_path} is missing") from None

    def parse_index(self, data: bytes) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        try:
            index = json.loads(data)
        except ValueError as exc:
            raise BrokenEntry(f"{self.index_path} is not valid JSON: {exc}") from None
        manifests = index.get("manifests") if isinstance(index, dict) else None
        if not isinstance(manifests, list):
            raise BrokenEntry(f"{self.index_path} has no manifests list")
        return index, [m for m in manifests if isinstance(m, dict)]

    def names(self, entry: Mapping[str, Any]) -> list[reference.Reference]:
        """The normalised names an index.json entry gives its image."""
        annotations = entry.get("annotations")
        if annotations is None:
            return []
        if not isinstance(annotations, dict):
            raise BrokenEntry("annotations is not a JSON object")
        out: list[reference.Reference] = []
        for key in (CONTAINERD_NAME, REF_NAME):
            value = annotations.get(key)
            if not isinstance(value, str) or not value:
                continue
            text = value
            if key == REF_NAME and _BARE_TAG_RE.match(value):
                # a bare tag: of the configured repository, else of the
                # containerd name's repository (as containerd exports write)
                repository = self.repository or (out[0].repository if out else "")
                if repository:
                    text = f"{repository}:{value}"
            try:
                ref = reference.parse(text)
            except reference.ReferenceError as exc:
                raise BrokenEntry(f"annotation {key}={value!r}: {exc}") from None
            if ref.kind is not reference.RefKind.NAME:
                if ref.also_name is None:
                    raise BrokenEntry(f"annotation {key}={value!r} is an image ID, not a name")
                ref = ref.also_name
            if ref not in out:
                out.append(ref)
        return out

    # -- resolution ------------------------------------------------------

    @staticmethod
    def _media_type(descriptor: Mapping[str, Any], blob: Mapping[str, Any] | None) -> str:
        media_type = descriptor.get("mediaType")
        if not media_type and blob is not None:
            media_type = blob.get("mediaType")
        return media_type if isinstance(media_type, str) else ""

    def _pick_platform(self, manifests: Any) -> Mapping[str, Any] | None:
        if not isinstance(manifests, list):
            raise BrokenEntry("image index has no manifests list")
        fallback = None
        for candidate in manifests:
            if not isinstance(candidate, dict):
                continue
            plat = candidate.get("platform") or {}
            if not isinstance(plat, dict):
                continue
            os_name, arch = plat.get("os", ""), plat.get("architecture", "")
            variant = plat.get("variant", "") or ""
            if not self.platform.matches(os_name, arch, variant):
                continue
            if variant == self.platform.variant:
                return candidate
            if fallback is None:
                fallback = candidate
        return fallback

    def resolve(self, entry: Mapping[str, Any]) -> EntryResult:
        """The record (or problem) and blob closure of one index.json entry."""
        key = entry_key(entry)
        closure: dict[str, None] = {}
        digest = entry.get("digest")
        if isinstance(digest, str) and _DIGEST_RE.match(digest):
            closure[digest] = None
        try:
            record = self._record(entry, closure)
        except BrokenEntry as exc:
            return EntryResult(key, None, str(exc), tuple(closure), complete=False)
        complete = self._complete_closure(entry, closure)
        # interned: the digests of shared layers are one object for all images
        return EntryResult(key, record, "", tuple(sys.intern(d) for d in closure), complete)

    def _record(self, entry: Mapping[str, Any], closure: dict[str, None]) -> ImageRecord:
        names = self.names(entry)
        manifest_desc, manifest = self._resolve_manifest(entry, closure, 0)
        media_type = self._media_type(manifest_desc, manifest)
        if media_type in CONFIGLESS_TYPES:
            return self._configless_record(entry, names, manifest_desc, manifest, media_type)
        config_desc = manifest.get("config")
        if not isinstance(config_desc, dict):
            raise BrokenEntry("manifest has no config descriptor")
        config_type = config_desc.get("mediaType", "")
        if config_type not in CONFIG_TYPES:
            raise BrokenEntry(f"config media type {config_type!r} is not a container image config")
        config, config_bytes = self.read_json(config_desc, "config")
        closure[str(config_desc["digest"])] = None
        layers = manifest.get("layers")
        if not isinstance(layers, list):
            raise BrokenEntry("manifest has no layers list")
        size = int(manifest_desc.get("size", 0)) + int(config_desc["size"])
        for layer in layers:
            if not isinstance(layer, dict):
                raise BrokenEntry("manifest has a malformed layer descriptor")
            size += self.check_layer(layer)
            closure[str(layer["digest"])] = None
        inner = config.get("config")
        user = inner.get("User", "") if isinstance(inner, dict) else ""
        entry_digest = str(entry["digest"])
        annotations = manifest.get("annotations")
        return ImageRecord(
            id=sys.intern(str(config_desc["digest"])),
            repo_tags=tuple(r.tagged() for r in names if r.tag),
            repo_digests=tuple(
                dict.fromkeys(f"{r.repository}@{r.digest or entry_digest}" for r in names)
            ),
            size=size,
            user=user if isinstance(user, str) else "",
            annotations=(
                {str(k): str(v) for k, v in annotations.items()}
                if isinstance(annotations, dict) and annotations
                else NO_ANNOTATIONS
            ),
            config=config_bytes,
            # chain_id is left to verbose ImageStatus, which derives it from
            # the config: 71 bytes a record saved at 100,000 images
            source=self.source,
            manifest_digest=sys.intern(str(manifest_desc.get("digest", ""))),
            manifest_media_type=sys.intern(self._media_type(manifest_desc, manifest)),
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
        extra = {"layout": str(self.root), "indexEntry": entry_digest}
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
            repo_digests=tuple(
                dict.fromkeys(f"{r.repository}@{r.digest or entry_digest}" for r in names)
            ),
            size=size,
            source=str(self.root),
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
        chosen = self._pick_platform(blob.get("manifests"))
        if chosen is None:
            raise BrokenEntry(f"no manifest for platform {self.platform}")
        return self._resolve_manifest(chosen, closure, depth + 1)

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
                    if isinstance(blob_sum, str) and _DIGEST_RE.match(blob_sum):
                        closure[blob_sum] = None
                continue
            if media_type in INDEX_TYPES:
                children = blob.get("manifests")
                if depth < 2 and isinstance(children, list):
                    stack.extend((c, depth + 1) for c in children if isinstance(c, dict))
                continue
            for child in (blob.get("config"), *(blob.get("layers") or ())):
                if isinstance(child, dict) and isinstance(child.get("digest"), str):
                    if _DIGEST_RE.match(child["digest"]):
                        closure[child["digest"]] = None
                    else:
                        complete = False
        return complete

    # -- scanning --------------------------------------------------------

    def scan(self, previous: Mapping[EntryKey, EntryResult] | None = None) -> Scan:
        """Every entry of ``index.json``, reusing ``previous`` results by key."""
        self.check_marker()
        data = self.read_index_bytes()
        _, entries = self.parse_index(data)
        results: list[EntryResult] = []
        reused = 0
        previous = previous or {}
        try:
            for entry in entries:
                key = entry_key(entry)
                known = previous.get(key)
                if known is not None:
                    results.append(known)
                    reused += 1
                else:
                    results.append(self.resolve(entry))
        finally:
            self._json.clear()
            self._layer_sizes.clear()
        return Scan(tuple(results), hashlib.sha256(data).hexdigest(), reused)

    # -- editing ---------------------------------------------------------

    def remove_entries(self, keys: set[EntryKey]) -> int:
        """Drop the entries with these keys from index.json, atomically.

        Returns how many entries were removed. The rest of the file (other
        entries, other top-level fields) is kept as it was.
        """
        index, _ = self.parse_index(self.read_index_bytes())
        manifests = index.get("manifests", [])
        kept = [m for m in manifests if not (isinstance(m, dict) and entry_key(m) in keys)]
        removed = len(manifests) - len(kept)
        if removed:
            index["manifests"] = kept
            atomic_write(
                self.index_path, json.dumps(index, separators=(",", ":")).encode(), fault="index"
            )
        return removed

    def clean_temp_files(self) -> int:
        """Remove what an interrupted index.json update left behind."""
        count = 0
        for path in stale_temp_files(self.root, "index.json"):
            path.unlink(missing_ok=True)
            count += 1
        return count

    def delete_blobs(self, digests: Iterable[str]) -> int:
        """Delete these blobs (those that exist); returns the count deleted."""
        count = 0
        touched: set[Path] = set()
        for digest in digests:
            try:
                path = self.blob_path(digest)
            except BrokenEntry:
                continue
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            touched.add(path.parent)
            count += 1
        for directory in touched:
            fsync_dir(directory)
        return count


def _walk(root: Path) -> Iterator[os.stat_result]:
    stack = [str(root)]
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as it:
                for item in it:
                    st = item.stat(follow_symlinks=False)
                    yield st
                    if item.is_dir(follow_symlinks=False):
                        stack.append(item.path)
        except OSError:
            continue


def mountpoint_of(path: Path) -> str:
    """The mountpoint of the filesystem holding ``path``."""
    current = path.resolve()
    dev = current.stat().st_dev
    while current != current.parent:
        parent = current.parent
        try:
            if parent.stat().st_dev != dev:
                break
        except OSError:
            break
        current = parent
    return str(current)


def measure(root: Path) -> FilesystemUsage:
    """Bytes (allocated blocks) and inodes the directory occupies, and where."""
    used = 0
    inodes = 1
    for st in _walk(root):
        used += st.st_blocks * 512
        inodes += 1
    return FilesystemUsage(
        mountpoint=mountpoint_of(root),
        used_bytes=used,
        inodes_used=inodes,
        timestamp_ns=time.time_ns(),
    )
