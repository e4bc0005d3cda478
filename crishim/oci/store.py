"""A writable content store in the OCI image-layout format.

Pulling backends write here; :class:`crishim.oci.layout.Layout` reads the
same directory, so the index code of ``oci-dir`` serves what was pulled.

On disk::

    <root>/oci-layout           the OCI layout marker
    <root>/index.json           one entry per image name (written atomically)
    <root>/blobs/<alg>/<hex>    committed, verified blobs (mode 0444)
    <root>/.ingest/             blobs being written: <hex>.<pid>.<random>
    <root>/.lock                flock(2) target: one writer of index.json at a time

Rules that keep the store valid whatever happens to the process:

* A blob is written under ``.ingest/``, hashed while it is written, and
  only renamed into ``blobs/`` after its size and digest matched and it was
  fsynced; the directory is fsynced after the rename. ``blobs/`` never
  holds a file whose content differs from its name.
* ``index.json`` is replaced atomically (:func:`crishim.oci.atomic.atomic_write`)
  and only after every blob its new entries need is committed, so an image
  becomes visible whole or not at all.
* Temp files of dead processes are removed when a store is opened.

Used bytes and inodes are running totals: measured once by a walk when the
store is opened, then adjusted as blobs are committed and deleted.

Crash tests can stop the process at ``store:before-commit`` (blob fsynced,
not yet renamed) and ``store:after-commit`` (renamed, directory not yet
fsynced) through the ``CRISHIM_FAULT`` hook of :mod:`crishim.oci.atomic`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from crishim.model import FilesystemUsage
from crishim.oci.atomic import atomic_write, fault_point, fsync_dir
from crishim.oci.safefs import Tree, Unsafe
from crishim.oci.spec import (
    OCI_INDEX,
    InvalidContent,
    blob_path,
    check_digest,
    is_valid_digest,
    parse_json,
)
from crishim.oci.usage import measure, mountpoint_of

log = logging.getLogger(__name__)

INGEST_DIR = ".ingest"
LOCK_FILE = ".lock"
LAYOUT_MARKER = b'{"imageLayoutVersion":"1.0.0"}'
BLOB_MODE = 0o444

_INGEST_RE = re.compile(r"^[a-f0-9]+\.(\d+)\.")


class BlobMismatch(Exception):
    """Content written for a digest is not that digest's content (size or hash)."""


class StoreError(Exception):
    """The store directory cannot be used; the message says why."""


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _allocated(st: os.stat_result) -> int:
    return st.st_blocks * 512


class BlobWriter:
    """One blob being written: hashed and counted as it goes, renamed in on commit.

    Use as a context manager; leaving it without :meth:`commit` removes the
    temp file.
    """

    def __init__(self, store: ContentStore, digest: str, size: int) -> None:
        algorithm, hexpart = check_digest(digest)
        if size < 0:
            raise ValueError(f"invalid size {size} for {digest}")
        self.store = store
        self.digest = digest
        self.size = size
        self.written = 0
        self._hash = hashlib.new(algorithm)
        fd, tmp = tempfile.mkstemp(prefix=f"{hexpart}.{os.getpid()}.", dir=store.ingest)
        self.temp_path = Path(tmp)
        self._file = os.fdopen(fd, "wb")
        self._done = False

    def write(self, data: bytes) -> None:
        if self.written + len(data) > self.size:
            raise BlobMismatch(
                f"blob {self.digest}: more than the {self.size} bytes its descriptor gives"
            )
        self._file.write(data)
        self._hash.update(data)
        self.written += len(data)

    def commit(self) -> bool:
        """Check size and digest, then make the blob visible; True if it was new."""
        if self.written != self.size:
            raise BlobMismatch(
                f"blob {self.digest}: got {self.written} bytes, its descriptor gives {self.size}"
            )
        actual = f"{self._hash.name}:{self._hash.hexdigest()}"
        if actual != self.digest:
            raise BlobMismatch(f"blob {self.digest}: content has digest {actual}")
        self._file.flush()
        os.fchmod(self._file.fileno(), BLOB_MODE)
        os.fsync(self._file.fileno())
        self._file.close()
        fault_point("store:before-commit")
        added = self.store._install(self.temp_path, self.digest)
        self._done = True
        return added

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            self.temp_path.unlink()

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.abort()


class ContentStore:
    """A content-addressed blob store plus ``index.json``, in OCI layout form.

    Thread-safe. Writers of ``index.json`` in several processes exclude each
    other through :meth:`locked` (a thread lock plus ``flock`` on ``.lock``).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.ingest = root / INGEST_DIR
        self.index_path = root / "index.json"
        self._lock_path = root / LOCK_FILE
        self._thread_lock = threading.RLock()
        self._lock_depth = 0
        self._lock_fd: int | None = None
        self._usage_lock = threading.Lock()
        self._tree = Tree(root)
        self._used_bytes = 0
        self._inodes = 0
        self._mountpoint = ""

    # -- opening ---------------------------------------------------------

    def open(self) -> None:
        """Create the layout if needed, drop dead temp files, measure usage once."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self.ingest.mkdir(exist_ok=True)
            (self.blobs / "sha256").mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot create the store at {self.root}: {exc.strerror}") from None
        for directory in (self.ingest, self.blobs, self.blobs / "sha256"):
            if directory.is_symlink() or not directory.is_dir():
                raise StoreError(
                    f"{directory} is not a directory of the store (a symlink?); refusing to use it"
                )
        with self.locked():
            marker = self.root / "oci-layout"
            if not marker.exists():
                atomic_write(marker, LAYOUT_MARKER)
            self._check_version(marker)
            if not self.index_path.exists():
                atomic_write(self.index_path, self._dump({"schemaVersion": 2, "manifests": []}))
            removed = self._clean_temp_files()
            if removed:
                log.info(
                    "store %s: removed %d temp files of interrupted writes", self.root, removed
                )
            self.remeasure()

    def _check_version(self, marker: Path) -> None:
        """The store's format is its OCI layout version: 1.x is read, anything else refused."""
        try:
            version = json.loads(marker.read_bytes()).get("imageLayoutVersion")
        except (OSError, ValueError, AttributeError):
            version = None
        if not isinstance(version, str) or version.split(".")[0] != "1":
            raise StoreError(
                f"store {self.root}: {marker.name} says imageLayoutVersion {version!r}; "
                "this crishim reads 1.x stores only (written by a newer crishim?)"
            )

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _clean_temp_files(self) -> int:
        count = 0
        for entry in os.scandir(self.ingest):
            match = _INGEST_RE.match(entry.name)
            if match and _pid_alive(int(match[1])):
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                count += 1
        # atomic_write temp files of index.json: nobody writes it without the
        # lock, which the caller holds, so any left are from a dead writer
        for path in self.root.glob(".index.json.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                count += 1
        return count

    def remeasure(self) -> None:
        """Walk the store once and reset the running totals.

        Files being written under ``.ingest/`` are left out: they are counted
        when they are committed.
        """
        writing = measure(self.ingest)
        usage = measure(self.root)
        with self._usage_lock:
            self._used_bytes = usage.used_bytes - writing.used_bytes
            self._inodes = usage.inodes_used - (writing.inodes_used - 1)
            self._mountpoint = usage.mountpoint or mountpoint_of(self.root)

    # -- locking ---------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive use of index.json (and garbage collection), across processes."""
        with self._thread_lock:
            if self._lock_depth == 0 and self._lock_fd is not None:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
                if self._lock_depth == 0 and self._lock_fd is not None:
                    fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    # -- blobs -----------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        """Where the blob is (or would be) committed; ValueError for an invalid digest."""
        return self.root / blob_path(digest)

    def has(self, digest: str, size: int | None = None) -> bool:
        """Whether the blob is committed (and has ``size`` bytes, when given)."""
        try:
            st = self.blob_path(digest).stat()
        except FileNotFoundError:
            return False
        return size is None or st.st_size == size

    def missing(self, sizes: dict[str, int]) -> list[str]:
        """The digests of ``sizes`` that are not committed with that size."""
        return [d for d, s in sizes.items() if not self.has(d, s)]

    def writer(self, digest: str, size: int) -> BlobWriter:
        return BlobWriter(self, digest, size)

    def put(self, digest: str, data: bytes) -> bool:
        """Verify and commit a blob held in memory; True if it was new."""
        with self.writer(digest, len(data)) as w:
            w.write(data)
            return w.commit()

    def _install(self, temp: Path, digest: str) -> bool:
        """Rename a verified temp file into place; False if the blob was there already."""
        target = self.blob_path(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        with self._usage_lock:
            try:
                old: os.stat_result | None = target.stat()
            except FileNotFoundError:
                old = None
            if old is not None and old.st_size == temp.stat().st_size:
                # committed blobs were verified when written: the same content
                temp.unlink(missing_ok=True)
                return False
            # absent, or damaged behind our back: the verified copy replaces it
            os.replace(temp, target)
            fault_point("store:after-commit")
            try:
                self._used_bytes += _allocated(target.stat())
                self._inodes += 1
            except FileNotFoundError:
                pass
            if old is not None:
                self._used_bytes -= _allocated(old)
                self._inodes -= 1
        fsync_dir(target.parent)
        return old is None

    def delete(self, digests: Iterable[str]) -> int:
        """Delete these blobs (those present); returns how many were deleted."""
        count = 0
        touched: set[Path] = set()
        for digest in digests:
            try:
                path = self.blob_path(digest)
            except ValueError:
                continue
            with self._usage_lock:
                try:
                    st = path.lstat()
                    # through the store's own directories: never a name elsewhere
                    if not self._tree.unlink(str(path.relative_to(self.root))):
                        continue
                except FileNotFoundError:
                    continue
                except Unsafe as exc:
                    log.warning("store %s: not deleting %s: %s", self.root, path, exc.strerror)
                    continue
                self._used_bytes -= _allocated(st)
                self._inodes -= 1
            touched.add(path.parent)
            count += 1
        for directory in touched:
            fsync_dir(directory)
        return count

    def blob_digests(self) -> Iterator[str]:
        """Every committed blob's digest (by file name)."""
        for algorithm in ("sha256", "sha512"):
            directory = self.blobs / algorithm
            with contextlib.suppress(FileNotFoundError), os.scandir(directory) as it:
                for entry in it:
                    digest = f"{algorithm}:{entry.name}"
                    if is_valid_digest(digest):
                        yield digest

    # -- index.json ------------------------------------------------------

    @staticmethod
    def _dump(index: dict[str, Any]) -> bytes:
        return json.dumps(index, separators=(",", ":"), sort_keys=True).encode()

    def read_index(self) -> dict[str, Any]:
        """index.json parsed; StoreError when it is not an OCI index."""
        try:
            index = parse_json(self.index_path.read_bytes(), str(self.index_path))
        except FileNotFoundError:
            raise StoreError(f"{self.index_path} is missing") from None
        except InvalidContent as exc:
            raise StoreError(str(exc)) from None
        if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
            raise StoreError(f"{self.index_path} has no manifests list")
        return index

    def update_index(self, change: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]) -> bool:
        """Replace index.json's entries with ``change(entries)``, atomically.

        Holds the store lock; returns False (and writes nothing) when the
        entries did not change.
        """
        with self.locked():
            index = self.read_index()
            entries = [m for m in index["manifests"] if isinstance(m, dict)]
            new = change(list(entries))
            if new == entries:
                return False
            index["manifests"] = new
            index.setdefault("schemaVersion", 2)
            index.setdefault("mediaType", OCI_INDEX)
            with self._usage_lock:
                try:
                    before = _allocated(self.index_path.stat())
                except FileNotFoundError:
                    before = 0
            atomic_write(self.index_path, self._dump(index))
            with self._usage_lock:
                self._used_bytes += _allocated(self.index_path.stat()) - before
            return True

    # -- usage -----------------------------------------------------------

    def usage(self) -> FilesystemUsage:
        with self._usage_lock:
            return FilesystemUsage(
                mountpoint=self._mountpoint,
                used_bytes=max(self._used_bytes, 0),
                inodes_used=max(self._inodes, 0),
                timestamp_ns=time.time_ns(),
            )
