"""The ``docker-archive`` backend: an in-memory index over ``docker save`` files.

* Start-up: every archive in the directory matching ``pattern`` is read
  (headers, ``manifest.json``, configs; layers are only sized) and the
  images published as one index. An archive that cannot be read, or an
  image in it that cannot be served, is logged and skipped; the rest serve.
* Live: with ``rescan_interval`` set, the directory is checked that often;
  only archives whose size or modification time changed are read again,
  and the new index replaces the old in one assignment.
* Read-only: RemoveImage of one of its images is FAILED_PRECONDITION.

Lookups never touch the disk: they are answered from the published index.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from pydantic import Field

from crishim.errors import BackendError, ReadOnly
from crishim.model import FilesystemUsage, ImageRecord
from crishim.types import BackendContext, BackendOptions, IndexedBackend

from .archive import ArchiveError, read_archive

log = logging.getLogger(__name__)

#: (inode, size, mtime_ns): an archive not rewritten since it was read.
Identity = tuple[int, int, int]


class DockerArchiveOptions(BackendOptions):
    #: The directory holding the archives (relative: to the config file).
    path: str
    #: Which files are archives (a glob in that directory).
    pattern: str = "*.tar*"
    #: Seconds between checks for new, changed or removed archives; 0: only at start.
    rescan_interval: float = Field(default=0.0, ge=0)


def _mountpoint(path: Path) -> str:
    current = path.resolve()
    dev = current.stat().st_dev
    while current != current.parent and current.parent.stat().st_dev == dev:
        current = current.parent
    return str(current)


class DockerArchiveBackend(IndexedBackend):
    """Serves the images of a directory of ``docker save`` archives from memory."""

    def __init__(self, context: BackendContext, options: DockerArchiveOptions) -> None:
        super().__init__(context)
        self.options = options
        self.root = context.resolve_path(options.path)
        self._read: dict[Path, tuple[Identity, list[ImageRecord]]] = {}
        self._usage: tuple[FilesystemUsage, ...] = ()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        if not self.root.is_dir():
            raise BackendError(self.name, f"archive directory {self.root} does not exist")
        self.refresh()
        if self.options.rescan_interval > 0:
            self._thread = threading.Thread(
                target=self._rescan_loop, name=f"{self.name}-rescan", daemon=True
            )
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def refresh(self) -> None:
        """Read new and changed archives, forget removed ones, publish the index."""
        with self._lock:
            started = time.monotonic()
            seen: dict[Path, tuple[Identity, list[ImageRecord]]] = {}
            used = 0
            for path in sorted(self.root.glob(self.options.pattern)):
                try:
                    st = path.stat()
                except OSError:
                    continue
                if not path.is_file():
                    continue
                used += st.st_blocks * 512
                identity = (st.st_ino, st.st_size, st.st_mtime_ns)
                known = self._read.get(path)
                if known is not None and known[0] == identity:
                    seen[path] = known
                    continue
                seen[path] = (identity, self._read_one(path))
            self._read = seen
            self.publish(record for _, records in seen.values() for record in records)
            self._usage = (
                FilesystemUsage(
                    mountpoint=_mountpoint(self.root),
                    used_bytes=used,
                    inodes_used=len(seen),
                    timestamp_ns=time.time_ns(),
                ),
            )
            log.info(
                "backend %s: %d images from %d archives in %s (%.2fs)",
                self.name,
                len(self.index),
                len(seen),
                self.root,
                time.monotonic() - started,
            )

    def _read_one(self, path: Path) -> list[ImageRecord]:
        try:
            records, problems = read_archive(path)
        except ArchiveError as exc:
            log.warning("backend %s: skipped archive %s: %s", self.name, path.name, exc)
            return []
        for problem in problems:
            log.warning("backend %s: %s: skipped an image: %s", self.name, path.name, problem)
        return records

    def _rescan_loop(self) -> None:
        while not self._stop.wait(self.options.rescan_interval):
            try:
                self.refresh()
            except Exception:
                log.exception("backend %s: rescan failed; still serving the old index", self.name)

    def filesystem_usage(self) -> Sequence[FilesystemUsage]:
        return self._usage

    def remove_image(self, record: ImageRecord) -> None:
        raise ReadOnly(
            f"backend {self.name!r} serves `docker save` archives read-only; "
            f"remove the archive holding {record.id} from {self.root} instead"
        )


__all__ = ["DockerArchiveBackend", "DockerArchiveOptions"]
