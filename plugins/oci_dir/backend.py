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

import contextlib
import errno
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import Field, field_validator

from crishim import reference
from crishim.config import ExistingDirectory
from crishim.errors import BackendError, ReadOnly
from crishim.model import FilesystemUsage, ImageRecord
from crishim.oci import snapshot
from crishim.oci.layout import (
    BrokenEntry,
    EntryKey,
    EntryResult,
    Layout,
    Scan,
    file_identity,
    measure,
)
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
        self.snapshot_path = (
            None if context.state_dir is None else context.state_dir / SNAPSHOT_FILE
        )
        self._settings = {
            "root": str(self.root),
            "platform": str(context.platform),
            "repository": options.repository,
        }
        self._results: tuple[EntryResult, ...] = ()
        self._index_identity: tuple[int, int, int] | None = None
        self._usage: tuple[FilesystemUsage, ...] = ()
        self._lock = threading.RLock()  # one re-scan or write at a time
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        #: Bumped on every published index; tests and tools wait on it.
        self.generation = 0
        self._measure_lock = threading.Lock()
        self._snapshot_lock = threading.Lock()
        self._snapshot_write_lock = threading.Lock()
        self._pending_snapshot: tuple[Scan, tuple[int, int, int] | None] | None = None
        self._snapshotting = False
        self._measure_wanted = False
        self._measuring = False

    # -- lifecycle -------------------------------------------------------

    def start(self) -> None:
        if not self.root.is_dir():
            raise BackendError(self.name, f"layout directory {self.root} does not exist")
        started = time.monotonic()
        if not self.options.read_only:
            cleaned = self.layout.clean_temp_files()
            if cleaned:
                log.info("backend %s: removed %d stale index.json temp files", self.name, cleaned)
        seed = self._load_snapshot()
        if seed is None or not self._serve_snapshot(seed):
            self.refresh(previous=None if seed is None else seed[0])
        log.debug(
            "backend %s: ready with %d images in %.2fs",
            self.name,
            len(self.index),
            time.monotonic() - started,
        )
        self._spawn(self._watch_loop, "watch")

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._flush_snapshot()

    def _spawn(self, target: Callable[[], None], what: str) -> None:
        thread = threading.Thread(target=target, name=f"{self.name}-{what}", daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()]
        self._threads.append(thread)
        thread.start()

    # -- snapshot --------------------------------------------------------

    def _load_snapshot(self) -> snapshot.Loaded | None:
        if not self.options.snapshot or self.snapshot_path is None:
            return None
        try:
            return snapshot.load(self.snapshot_path, self._settings)
        except snapshot.SnapshotError as exc:
            level = logging.DEBUG if "no snapshot yet" in str(exc) else logging.WARNING
            log.log(
                level, "backend %s: snapshot %s not used: %s", self.name, self.snapshot_path, exc
            )
            return None

    def _serve_snapshot(self, seed: snapshot.Loaded) -> bool:
        """Publish the snapshot if index.json is the one it was made from.

        The same file (inode, size, mtime) is taken as the same content;
        otherwise the content's sha256 decides.
        """
        results, index_sha, made_from, usage = seed
        identity = file_identity(self.layout.index_path)
        try:
            self.layout.check_marker()
            if identity is None or identity != made_from:
                data = self.layout.read_index_bytes()
                if hashlib.sha256(data).hexdigest() != index_sha:
                    log.info("backend %s: snapshot is stale; re-indexing incrementally", self.name)
                    return False
        except BrokenEntry:
            return False
        with self._lock:
            self._index_identity = identity
            self._install(results)
            if usage is not None:
                self._usage = (usage,)
        log.info(
            "backend %s: %d images from the snapshot of %s (%d index.json entries)",
            self.name,
            len(self.index),
            self.root,
            len(results),
        )
        self._request_measure()
        return True

    def _save_snapshot(self, scan: Scan) -> None:
        """Have the snapshot written in the background (the latest one wins).

        Writing tens of MB at 100,000 images must not delay the next
        re-index; close() writes what is still pending.
        """
        if not self.options.snapshot or self.snapshot_path is None:
            return
        with self._snapshot_lock:
            self._pending_snapshot = (scan, self._index_identity)
            if self._snapshotting:
                return
            self._snapshotting = True
        self._spawn(self._snapshot_loop, "snapshot")

    def _snapshot_loop(self) -> None:
        while True:
            # let a burst of changes settle first: a snapshot write holds the
            # interpreter for a while at 100,000 images and would slow the
            # re-index of the next change
            self._stop.wait(SNAPSHOT_DELAY)
            with self._snapshot_lock:
                pending, self._pending_snapshot = self._pending_snapshot, None
                if pending is None:
                    self._snapshotting = False
                    return
            self._write_snapshot(*pending)

    def _flush_snapshot(self) -> None:
        with self._snapshot_lock:
            pending, self._pending_snapshot = self._pending_snapshot, None
        if pending is not None:
            self._write_snapshot(*pending)

    def _write_snapshot(self, scan: Scan, identity: tuple[int, int, int] | None) -> None:
        assert self.snapshot_path is not None
        with self._snapshot_write_lock:
            try:
                usage = self._usage[0] if self._usage else None
                snapshot.save(
                    self.snapshot_path,
                    scan.results,
                    scan.index_sha256,
                    self._settings,
                    usage,
                    identity,
                )
            except OSError as exc:
                log.warning(
                    "backend %s: cannot write snapshot %s: %s", self.name, self.snapshot_path, exc
                )

    # -- indexing --------------------------------------------------------

    def _install(self, results: tuple[EntryResult, ...]) -> None:
        self._results = results
        self.publish(r.record for r in results if r.record is not None)
        self.generation += 1

    def refresh(self, previous: tuple[EntryResult, ...] | None = None) -> None:
        """Re-read the layout (reusing known entries) and swap in the new index."""
        with self._lock:
            identity = file_identity(self.layout.index_path)
            known = {r.key: r for r in (self._results if previous is None else previous)}
            started = time.monotonic()
            try:
                scan = self.layout.scan(known)
            except BrokenEntry as exc:
                log.error("backend %s: %s; serving no images from it", self.name, exc)
                self._index_identity = identity
                self._install(())
                return
            self._index_identity = identity
            for result in scan.results:
                if result.problem and result.key not in known:
                    log.warning(
                        "backend %s: skipped entry %s: %s", self.name, result.key[0], result.problem
                    )
            self._install(scan.results)
            if not self._usage:
                self._measure()
            log.info(
                "backend %s: %d images from %s in %.2fs (%d entries reused, %d skipped)",
                self.name,
                len(self.index),
                self.root,
                time.monotonic() - started,
                scan.reused,
                sum(1 for r in scan.results if r.record is None),
            )
            self._save_snapshot(scan)

    def _changed(self) -> bool:
        return file_identity(self.layout.index_path) != self._index_identity

    def _watch_loop(self) -> None:
        interval_ms = int(self.options.rescan_interval * 1000)
        if self.options.watch:
            try:
                import watchfiles

                for _ in watchfiles.watch(
                    self.root,
                    watch_filter=lambda change, path: os.path.basename(path) == "index.json",
                    debounce=200,
                    step=50,
                    stop_event=self._stop,
                    rust_timeout=interval_ms,
                    yield_on_timeout=True,
                    recursive=False,
                    raise_interrupt=False,
                ):
                    self._refresh_if_changed()
                return
            except Exception:
                if self._stop.is_set():
                    return
                log.exception("backend %s: watcher failed; falling back to polling", self.name)
        while not self._stop.wait(self.options.rescan_interval):
            self._refresh_if_changed()

    def _refresh_if_changed(self) -> None:
        if self._stop.is_set() or not self._changed():
            return
        try:
            self.refresh()
            self._request_measure()
        except Exception:
            log.exception(
                "backend %s: re-index failed; still serving the previous index", self.name
            )

    def _request_measure(self) -> None:
        """Re-measure usage in the background; requests made meanwhile coalesce.

        A walk of a large layout takes seconds: it must not delay the next
        re-index or a removal.
        """
        with self._measure_lock:
            self._measure_wanted = True
            if self._measuring:
                return
            self._measuring = True
        self._spawn(self._measure_loop, "measure")

    def _measure_loop(self) -> None:
        while not self._stop.is_set():
            with self._measure_lock:
                if not self._measure_wanted:
                    self._measuring = False
                    return
                self._measure_wanted = False
            self._measure()
        with self._measure_lock:
            self._measuring = False

    def _measure(self) -> None:
        try:
            self._usage = (measure(self.root),)
        except OSError as exc:
            log.warning("backend %s: cannot measure %s: %s", self.name, self.root, exc)

    # -- calls -----------------------------------------------------------

    def filesystem_usage(self) -> Sequence[FilesystemUsage]:
        return self._usage

    def remove_image(self, record: ImageRecord) -> None:
        if self.options.read_only:
            raise ReadOnly(f"backend {self.name!r} is read-only; cannot remove {record.id}")
        with self._lock:
            if self._changed():
                self.refresh()
            doomed = [r for r in self._results if r.record is not None and r.record.id == record.id]
            if not doomed:
                return
            keys: set[EntryKey] = {r.key for r in doomed}
            remaining = tuple(r for r in self._results if r.key not in keys)
            freed = self._remove_entries(keys, doomed, remaining)
            self._index_identity = file_identity(self.layout.index_path)
            self._install(remaining)
            deleted = freed + self._collect(doomed, remaining)
            log.info(
                "backend %s: removed %s (%d index entries, %d blobs)",
                self.name,
                record.id,
                len(keys),
                deleted,
            )
            with contextlib.suppress(BrokenEntry, OSError):
                data = self.layout.read_index_bytes()
                self._save_snapshot(
                    Scan(remaining, hashlib.sha256(data).hexdigest(), len(remaining))
                )
        self._request_measure()

    def _remove_entries(
        self,
        keys: set[EntryKey],
        doomed: Sequence[EntryResult],
        remaining: Sequence[EntryResult],
    ) -> int:
        """Rewrite index.json without the entries; on a full disk, make room first.

        The rewrite needs room for the new index.json beside the old one. On
        a full disk the blobs only the removed entries use are deleted first
        (a crash then leaves entries whose blobs are gone: they are skipped,
        the image is absent, as removed) and the rewrite is tried again.
        Returns the blobs deleted that way.
        """
        try:
            self.layout.remove_entries(keys)
            return 0
        except BrokenEntry as exc:
            raise BackendError(self.name, str(exc)) from exc
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise BackendError(
                    self.name, f"cannot rewrite {self.layout.index_path}: {exc.strerror}"
                ) from exc
        freed = self._collect(doomed, remaining)
        log.warning(
            "backend %s: the disk is full: deleted the %d blobs of the removed image "
            "before rewriting index.json",
            self.name,
            freed,
        )
        try:
            self.layout.remove_entries(keys)
        except OSError as exc:
            raise BackendError(
                self.name, f"cannot rewrite {self.layout.index_path}: {exc.strerror}"
            ) from exc
        return freed

    def _collect(self, doomed: Sequence[EntryResult], remaining: Sequence[EntryResult]) -> int:
        """Delete the blobs only the removed entries kept alive."""
        incomplete = [r for r in remaining if not r.complete]
        if incomplete:
            log.warning(
                "backend %s: not deleting blobs: %d remaining entries cannot be fully read "
                "(first: %s), so their blobs are unknown",
                self.name,
                len(incomplete),
                incomplete[0].key[0],
            )
            return 0
        candidates: set[str] = set()
        for result in doomed:
            candidates.update(result.closure)
        for result in remaining:
            candidates.difference_update(result.closure)
            if not candidates:
                return 0
        return self.layout.delete_blobs(candidates)
