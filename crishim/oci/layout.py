"""Reading and editing an OCI image layout.

Reading: each ``index.json`` entry becomes an :class:`EntryResult` through
a :class:`crishim.oci.resolve.Resolver` that reads the layout's blob files:
the image record (or the reason it cannot be served) and the closure of
blobs the entry keeps alive. Results are keyed by the entry's digest and
name annotations; blobs are content-addressed, so a result stays valid as
long as its entry is in ``index.json``, and a re-scan reuses the results of
the entries it has seen before (incremental re-indexing). The checks made
on every entry are the resolver's; here, on top of them, a blob path is
only ever built from a checked digest, so it names a file under
``blobs/``, and a blob that is a symlink leading out of ``blobs/`` is
refused.

Editing: :meth:`Layout.remove_entries` rewrites ``index.json`` atomically;
:meth:`Layout.delete_blobs` removes blobs no remaining entry references.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from crishim import reference
from crishim.model import Platform
from crishim.oci.atomic import atomic_write, fsync_dir, stale_temp_files
from crishim.oci.resolve import (
    BrokenEntry,
    EntryKey,
    EntryResult,
    MissingBlob,
    Resolver,
    UnreadableBlob,
    entry_key,
)
from crishim.oci.safefs import Tree, Unsafe
from crishim.oci.spec import (
    CONFIG_TYPES,
    CONFIGLESS_TYPES,
    CONTAINERD_NAME,
    DOCKER_CONFIG,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    DOCKER_SCHEMA1,
    DOCKER_SCHEMA1_SIGNED,
    EMBEDDED_MANIFEST,
    INDEX_TYPES,
    MANIFEST_TYPES,
    MAX_JSON_BLOB,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    REF_NAME,
    InvalidContent,
    blob_path,
    chain_id,
    parse_json,
)
from crishim.oci.usage import measure, mountpoint_of

# Names other modules have imported from here; crishim.oci.spec,
# crishim.oci.resolve and crishim.oci.usage own them now.
__all__ = [
    "CONFIGLESS_TYPES",
    "CONFIG_TYPES",
    "CONTAINERD_NAME",
    "DOCKER_CONFIG",
    "DOCKER_LIST",
    "DOCKER_MANIFEST",
    "DOCKER_SCHEMA1",
    "DOCKER_SCHEMA1_SIGNED",
    "EMBEDDED_MANIFEST",
    "INDEX_TYPES",
    "MANIFEST_TYPES",
    "MAX_JSON_BLOB",
    "OCI_CONFIG",
    "OCI_INDEX",
    "OCI_MANIFEST",
    "REF_NAME",
    "BrokenEntry",
    "EntryKey",
    "EntryResult",
    "FileIdentity",
    "Layout",
    "Scan",
    "chain_id",
    "entry_key",
    "file_identity",
    "measure",
    "mountpoint_of",
]

log = logging.getLogger(__name__)
_T = TypeVar("_T")

#: index.json larger than this is refused (100,000 entries take about 40 MB).
MAX_INDEX_JSON = 1024 * 1024 * 1024

#: (inode, size, mtime_ns) of a file: what tells a changed index.json.
FileIdentity = tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class Scan:
    results: tuple[EntryResult, ...]
    index_sha256: str
    reused: int


def file_identity(path: Path) -> FileIdentity | None:
    """(inode, size, mtime_ns) of a file, or None: what tells a changed index.json."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class Layout:
    """One OCI image-layout directory."""

    def __init__(self, root: Path, platform: Platform, repository: str = "") -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.index_path = root / "index.json"
        self.platform = platform
        self.repository = repository
        self.source = sys.intern(str(root))
        self.tree = Tree(root)
        self.resolver = Resolver(self, platform, repository)

    # -- blobs -----------------------------------------------------------

    def blob_path(self, digest: object) -> Path:
        return self.root / self._blob_file(digest)

    @staticmethod
    def _blob_file(digest: object) -> str:
        """``blobs/<algorithm>/<hex>``: the digest grammar (hex only) keeps it a name."""
        try:
            return blob_path(digest)
        except InvalidContent as exc:
            raise BrokenEntry(str(exc)) from None

    def read_blob(self, digest: str, limit: int) -> bytes:
        """A blob's first ``limit`` bytes (the BlobReader the resolver uses)."""
        return self._on_blob(digest, lambda path: self.tree.read(path, limit))

    def blob_size(self, digest: str) -> int:
        return self._on_blob(digest, self.tree.size)

    def _on_blob(self, digest: str, action: Callable[[str], _T]) -> _T:
        """``action`` on a blob's path; what fails, as the resolver's errors say it."""
        try:
            return action(self._blob_file(digest))
        except FileNotFoundError:
            raise MissingBlob(digest) from None
        except Unsafe as exc:
            raise BrokenEntry(f"blob {digest}: {exc.strerror}: refused") from None
        except OSError as exc:
            raise UnreadableBlob(str(exc.strerror)) from None

    def resolve(self, entry: Mapping[str, Any]) -> EntryResult:
        """The record (or problem) and blob closure of one index.json entry."""
        return self.resolver.resolve(entry)

    def names(self, entry: Mapping[str, Any]) -> list[reference.Reference]:
        """The normalised names an index.json entry gives its image."""
        return self.resolver.names(entry)

    # -- index.json ------------------------------------------------------

    def _read_small(self, name: str, limit: int, missing: str = "") -> bytes:
        """A file at the layout's top (``oci-layout``, ``index.json``), a regular file only."""
        try:
            data = self.tree.read(name, limit + 1)
        except FileNotFoundError:
            if missing:
                raise BrokenEntry(f"{self.root} is {missing}{name} is missing") from None
            raise BrokenEntry(f"{self.root / name} is missing") from None
        except Unsafe as exc:
            raise BrokenEntry(f"{self.root / name} is refused: {exc.strerror}") from None
        except OSError as exc:
            raise BrokenEntry(f"{self.root / name} cannot be read: {exc.strerror}") from None
        if len(data) > limit:
            raise BrokenEntry(f"{self.root / name} is over {limit} bytes")
        return data

    def check_marker(self) -> None:
        data = self._read_small("oci-layout", 4096, missing="not an OCI image layout: ")
        try:
            marker = parse_json(data, f"{self.root}/oci-layout")
        except InvalidContent as exc:
            raise BrokenEntry(str(exc)) from None
        if not isinstance(marker, dict) or "imageLayoutVersion" not in marker:
            raise BrokenEntry(f"{self.root}/oci-layout has no imageLayoutVersion")

    def read_index_bytes(self) -> bytes:
        return self._read_small("index.json", MAX_INDEX_JSON)

    def parse_index(self, data: bytes) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        try:
            index = parse_json(data, str(self.index_path))
        except InvalidContent as exc:
            raise BrokenEntry(str(exc)) from None
        manifests = index.get("manifests") if isinstance(index, dict) else None
        if not isinstance(manifests, list):
            raise BrokenEntry(f"{self.index_path} has no manifests list")
        return index, [m for m in manifests if isinstance(m, dict)]

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
            self.resolver.clear()
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
        """Delete these blobs (those that exist); returns the count deleted.

        Names are removed through the layout's own directories: a
        ``blobs/`` that leads elsewhere deletes nothing.
        """
        count = 0
        touched: set[str] = set()
        for digest in digests:
            try:
                path = self._blob_file(digest)
            except BrokenEntry:
                continue
            try:
                if not self.tree.unlink(path):
                    continue
            except Unsafe as exc:
                log.warning("layout %s: not deleting %s: %s", self.root, path, exc.strerror)
                continue
            touched.add(path.rpartition("/")[0])
            count += 1
        for directory in touched:
            fsync_dir(self.root / directory)
        return count
