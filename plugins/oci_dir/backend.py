"""The ``oci-dir`` backend: an in-memory index over one OCI image layout.

* Start-up: a persisted snapshot whose ``index.json`` checksum still
  matches is served at once; otherwise the layout is scanned (reusing the
  snapshot's entries where they still appear).
* Live: a watcher thread (watchfiles, with a periodic check of
  ``index.json``'s identity as the safety net) re-scans when ``index.json``
  changes. Re-scans are incremental: entries seen before are reused. The
  new index replaces the old in one assignment.
* Removal: every ``index.json`` entry naming the image is dropped (write
  aside, fsync, rename), then the blobs only those entries referenced are
  deleted, synchronously.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from pydantic import Field, field_validator

from crishim import reference
from crishim.config import ExistingDirectory
from crishim.errors import BackendError, ReadOnly
from crishim.model import FilesystemUsage, ImageRecord
from crishim.oci.indexing import LayoutIndex, Removal, rewrite_making_room
from crishim.oci.layout import BrokenEntry, EntryResult, Layout, Scan, file_identity
from crishim.oci.snapshot import Loaded, SnapshotKeeper
from crishim.oci.usage import UsageMeter
from crishim.types import BackendContext, BackendOptions, IndexedBackend

log = logging.getLogger(__name__)

SNAPSHOT_FILE = "oci-dir-index.snapshot"
#: Seconds a snapshot write waits after a change, so bursts coalesce.
SNAPSHOT_DELAY = 2.0


class OciDirOptions(BackendOptions):
    #: The layout directory (holding ``oci-layout``, ``index.json``, ``blobs/``).
    path: ExistingDirectory
    #: Repository for ``org.opencontainers.image.ref.name`` values that are a
    #: bare tag (``v1.0``): they become ``<repository>:<tag>``.
    repository: str = ""
    #: Refuse removals (FAILED_PRECONDITION).
    read_only: bool = False
    #: Watch the layout and re-index when ``index.json`` changes.
    watch: bool = True
    #: Seconds between safety-net checks of ``index.json`` (also when not watching).
    rescan_interval: float = Field(default=30.0, gt=0)
    #: Keep a snapshot of the index under the state directory for fast restarts.
    snapshot: bool = True

    @field_validator("repository")
    @classmethod
    def _repository(cls, value: str) -> str:
        if not value:
            return value
        try:
            ref = reference.parse(value)
        except reference.ReferenceError as exc:
            raise ValueError(str(exc)) from exc
        if ref.kind is not reference.RefKind.NAME or ref.digest or ":" in value.rpartition("/")[2]:
            raise ValueError("must be a repository name without tag or digest")
        return ref.repository


class OciDirBackend(IndexedBackend):
    """Serves the images of one OCI image-layout directory from memory."""

    def __init__(self, context: BackendContext, options: OciDirOptions) -> None:
        super().__init__(context)
        self.options = options
        self.root: Path = context.resolve_path(options.path)
        self.layout = Layout(self.root, context.platform, options.repository)
        self.entries = LayoutIndex(self.name, self.layout, self.publish)
        self._lock = threading.RLock()  # one re-scan or write at a time
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self.usage = UsageMeter(self.name, self.root, self._stop)
        snapshot_path = None
        if options.snapshot and context.state_dir is not None:
            snapshot_path = context.state_dir / SNAPSHOT_FILE
        self.snapshots = SnapshotKeeper(
            self.name,
            snapshot_path,
            {
                "root": str(self.root),
                "platform": str(context.platform),
                "repository": options.repository,
            },
            self._stop,
            lambda: self.usage.latest,
            SNAPSHOT_DELAY,
        )

    @property
    def generation(self) -> int:
        """Bumped on every published index; tests and tools wait on it."""
        return self.entries.generation

    # -- lifecycle -------------------------------------------------------

    def start(self) -> None:
        if not self.root.is_dir():
            raise BackendError(self.name, f"layout directory {self.root} does not exist")
        started = time.monotonic()
        if not self.options.read_only:
            cleaned = self.layout.clean_temp_files()
            if cleaned:
                log.info("backend %s: removed %d stale index.json temp files", self.name, cleaned)
        seed = self.snapshots.load()
        if seed is None or not self._serve_snapshot(seed):
            self.refresh(previous=None if seed is None else seed.results)
        log.debug(
            "backend %s: ready with %d images in %.2fs",
            self.name,
            len(self.index),
            time.monotonic() - started,
        )
        self._watcher = self.entries.follow(
            self._refresh_changed,
            self._stop,
            self.options.rescan_interval,
            notify=self.options.watch,
        )

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        self.usage.join(timeout=5)
        self.snapshots.join(timeout=5)
        self.snapshots.flush()

    # -- indexing --------------------------------------------------------

    def _serve_snapshot(self, seed: Loaded) -> bool:
        """Publish the snapshot if index.json is the one it was made from."""
        identity = file_identity(self.layout.index_path)
        if not self.snapshots.is_current(seed, self.layout, identity):
            return False
        with self._lock:
            self.entries.install(seed.results, identity)
            if seed.usage is not None:
                self.usage.set(seed.usage)
        log.info(
            "backend %s: %d images from the snapshot of %s (%d index.json entries)",
            self.name,
            len(self.index),
            self.root,
            len(seed.results),
        )
        self.usage.request()
        return True

    def refresh(self, previous: tuple[EntryResult, ...] | None = None) -> None:
        """Re-read the layout (reusing known entries) and swap in the new index."""
        with self._lock:
            identity = file_identity(self.layout.index_path)
            started = time.monotonic()
            try:
                scan = self.entries.rescan(previous)
            except BrokenEntry as exc:
                log.error("backend %s: %s; serving no images from it", self.name, exc)
                self.entries.install((), identity)
                return
            if not self.usage.current:
                self.usage.measure()
            log.info(
                "backend %s: %d images from %s in %.2fs (%d entries reused, %d skipped)",
                self.name,
                len(self.index),
                self.root,
                time.monotonic() - started,
                scan.reused,
                sum(1 for r in scan.results if r.record is None),
            )
            self.snapshots.save(scan, self.entries.identity)

    def _refresh_changed(self) -> None:
        """What the watcher runs when index.json changed."""
        self.refresh()
        self.usage.request()

    # -- calls -----------------------------------------------------------

    def filesystem_usage(self) -> Sequence[FilesystemUsage]:
        return self.usage.current

    def remove_image(self, record: ImageRecord) -> None:
        if self.options.read_only:
            raise ReadOnly(f"backend {self.name!r} is read-only; cannot remove {record.id}")
        with self._lock:
            if self.entries.changed():
                self.refresh()
            removal = self.entries.removal(record.id)
            if removal is None:
                return
            try:
                freed = rewrite_making_room(
                    self.name,
                    "the removed image",
                    lambda: self.layout.remove_entries(set(removal.keys)),
                    lambda: self._collect(removal),
                )
            except BrokenEntry as exc:
                raise BackendError(self.name, str(exc)) from exc
            except OSError as exc:
                raise BackendError(
                    self.name, f"cannot rewrite {self.layout.index_path}: {exc.strerror}"
                ) from exc
            self.entries.install(removal.remaining, file_identity(self.layout.index_path))
            deleted = freed + self._collect(removal)
            log.info(
                "backend %s: removed %s (%d index entries, %d blobs)",
                self.name,
                record.id,
                len(removal.keys),
                deleted,
            )
            try:
                sha = hashlib.sha256(self.layout.read_index_bytes()).hexdigest()
            except (BrokenEntry, OSError):
                pass
            else:
                remaining = removal.remaining
                self.snapshots.save(Scan(remaining, sha, len(remaining)), self.entries.identity)
        self.usage.request()

    def _collect(self, removal: Removal) -> int:
        """Delete the blobs only the removed entries kept alive."""
        incomplete = removal.incomplete()
        if incomplete:
            log.warning(
                "backend %s: not deleting blobs: %d remaining entries cannot be fully read "
                "(first: %s), so their blobs are unknown",
                self.name,
                len(incomplete),
                incomplete[0].key[0],
            )
            return 0
        candidates = removal.garbage()
        return self.layout.delete_blobs(candidates) if candidates else 0
