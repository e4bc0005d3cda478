"""Persisted index snapshots, so a restart serves at once.

Reading and parsing every manifest and config of a large layout costs
seconds at start-up (far more with a cold page cache). A snapshot stores
the scan results of a layout in one file, written atomically, and records
the sha256 of the ``index.json`` it was made from. It is used only when

* its header, format version and Python version match (``marshal`` is
  specific to a Python version; it also cannot run code on load, unlike
  pickle);
* the payload matches the checksum in the header (truncation, corruption);
* the layout's platform and repository settings match;

and it is *served* without a re-scan only when ``index.json`` still has
the recorded sha256. Otherwise its entries seed an incremental re-scan:
entries already known are reused, new ones are read.

:class:`SnapshotKeeper` is a backend's use of one: loaded at start-up,
written in the background once a burst of changes settles (the latest
scan wins), and what is pending written at close.
"""

from __future__ import annotations

import hashlib
import json
import logging
import marshal
import sys
import threading
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from crishim.model import NO_ANNOTATIONS, FilesystemUsage, ImageRecord
from crishim.oci.atomic import atomic_write
from crishim.oci.coalesce import Coalesced
from crishim.oci.layout import FileIdentity, Layout, Scan
from crishim.oci.resolve import BrokenEntry, EntryResult

log = logging.getLogger(__name__)

MAGIC = b"crishim-index-snapshot\n"
FORMAT = 3


class SnapshotError(Exception):
    """The snapshot cannot be used; the message says why."""


def _record_tuple(r: ImageRecord) -> tuple[Any, ...]:
    return (
        r.id,
        r.repo_tags,
        r.repo_digests,
        r.size,
        r.user,
        tuple(r.annotations.items()),
        r.config,
        r.chain_id,
        r.source,
        r.manifest_digest,
        r.manifest_media_type,
        tuple(r.extra.items()),
        r.artifact_type,
    )


def _record(t: tuple[Any, ...]) -> ImageRecord:
    # positional, in field order (see _record_tuple): this runs once per
    # image on every restart; marshal gives the tuples back as tuples
    (id_, tags, digests, size, user, annots, config, chain, source, mdigest, mtype, extra, art) = t
    return ImageRecord(
        id_,
        tags,
        digests,
        size,
        user,
        dict(annots) if annots else NO_ANNOTATIONS,
        config,
        chain,
        source,
        mdigest,
        mtype,
        dict(extra) if extra else NO_ANNOTATIONS,
        artifact_type=art,
    )


def _identity(settings: dict[str, str]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "python": list(sys.version_info[:2]),
        **settings,
    }


def save(
    path: Path,
    results: tuple[EntryResult, ...],
    index_sha256: str,
    settings: dict[str, str],
    usage: FilesystemUsage | None,
    index_identity: tuple[int, int, int] | None = None,
) -> None:
    """Write the snapshot atomically."""
    payload = marshal.dumps(
        [
            (
                r.key,
                None if r.record is None else _record_tuple(r.record),
                r.problem,
                r.closure,
                r.complete,
            )
            for r in results
        ]
    )
    header = {
        **_identity(settings),
        "index_sha256": index_sha256,
        "index_identity": None if index_identity is None else list(index_identity),
        "payload_crc32": zlib.crc32(payload),
        "usage": None
        if usage is None
        else [usage.mountpoint, usage.used_bytes, usage.inodes_used, usage.timestamp_ns],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    data = MAGIC + json.dumps(header).encode() + b"\n" + payload
    atomic_write(path, data, mode=0o600, fault="snapshot")


class Loaded(NamedTuple):
    results: tuple[EntryResult, ...]
    index_sha256: str
    #: (inode, size, mtime_ns) of the index.json the snapshot was made from
    index_identity: tuple[int, int, int] | None
    usage: FilesystemUsage | None


def load(path: Path, settings: dict[str, str]) -> Loaded:
    """What a snapshot holds; raises SnapshotError."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SnapshotError("no snapshot yet") from None
    except OSError as exc:
        raise SnapshotError(f"cannot read: {exc.strerror}") from None
    if not data.startswith(MAGIC):
        raise SnapshotError("not a crishim index snapshot")
    end = data.find(b"\n", len(MAGIC))
    if end < 0:
        raise SnapshotError("truncated header")
    try:
        header = json.loads(data[len(MAGIC) : end])
    except ValueError:
        raise SnapshotError("corrupt header") from None
    if not isinstance(header, dict):
        raise SnapshotError("corrupt header")
    for key, value in _identity(settings).items():
        if header.get(key) != value:
            raise SnapshotError(f"made with {key}={header.get(key)!r}, now {value!r}")
    payload = memoryview(data)[end + 1 :]
    if zlib.crc32(payload) != header.get("payload_crc32"):
        raise SnapshotError("payload does not match its checksum (truncated or corrupt)")
    try:
        raw = marshal.loads(payload)
        # The checksum above vouches for the bytes; a payload of the wrong
        # shape still fails here, in the unpacking, and is refused.
        results = tuple(
            [
                EntryResult(key, None if rec is None else _record(rec), problem, closure, complete)
                for key, rec, problem, closure, complete in raw
            ]
        )
    except (ValueError, TypeError, EOFError) as exc:
        raise SnapshotError(f"corrupt payload: {exc}") from None
    usage_raw = header.get("usage")
    usage = None
    if isinstance(usage_raw, list) and len(usage_raw) == 4:
        usage = FilesystemUsage(*usage_raw)
    index_sha = header.get("index_sha256")
    if not isinstance(index_sha, str):
        raise SnapshotError("corrupt header")
    raw = header.get("index_identity")
    identity = None
    if isinstance(raw, list) and len(raw) == 3 and all(isinstance(x, int) for x in raw):
        identity = (raw[0], raw[1], raw[2])
    return Loaded(results, index_sha, identity, usage)


class SnapshotKeeper:
    """One backend's snapshot file (none when ``path`` is None).

    Writing tens of MB at 100,000 images holds the interpreter for a
    while: a write waits ``delay`` seconds so that a burst of changes
    settles and would not slow the re-index of the next change; the
    latest scan wins, and :meth:`flush` (at close) writes what is pending.
    ``usage`` gives the figure stored with it.
    """

    def __init__(
        self,
        name: str,
        path: Path | None,
        settings: dict[str, str],
        stop: threading.Event,
        usage: Callable[[], FilesystemUsage | None],
        delay: float,
    ) -> None:
        self.name = name
        self.path = path
        self.settings = settings
        self._usage = usage
        self._writer: Coalesced[tuple[Scan, FileIdentity | None]] = Coalesced(
            f"{name}-snapshot", self._write, delay=delay, stop=stop
        )

    def load(self) -> Loaded | None:
        """What the snapshot holds, or None (no snapshot, or one that cannot be used: logged)."""
        if self.path is None:
            return None
        try:
            return load(self.path, self.settings)
        except SnapshotError as exc:
            level = logging.DEBUG if "no snapshot yet" in str(exc) else logging.WARNING
            log.log(level, "backend %s: snapshot %s not used: %s", self.name, self.path, exc)
            return None

    def is_current(self, seed: Loaded, layout: Layout, identity: FileIdentity | None) -> bool:
        """Whether ``layout``'s index.json (of that identity) is the one the snapshot was made from.

        The same file (inode, size, mtime) is taken as the same content;
        otherwise the content's sha256 decides.
        """
        try:
            layout.check_marker()
            if identity is None or identity != seed.index_identity:
                data = layout.read_index_bytes()
                if hashlib.sha256(data).hexdigest() != seed.index_sha256:
                    log.info("backend %s: snapshot is stale; re-indexing incrementally", self.name)
                    return False
        except BrokenEntry:
            return False
        return True

    def save(self, scan: Scan, identity: FileIdentity | None) -> None:
        """Have the snapshot of ``scan`` written in the background."""
        if self.path is not None:
            self._writer.request((scan, identity))

    def _write(self, pending: tuple[Scan, FileIdentity | None]) -> None:
        assert self.path is not None
        scan, identity = pending
        try:
            save(self.path, scan.results, scan.index_sha256, self.settings, self._usage(), identity)
        except OSError as exc:
            log.warning("backend %s: cannot write snapshot %s: %s", self.name, self.path, exc)

    def flush(self) -> None:
        """Write what is pending now."""
        self._writer.flush()

    def join(self, timeout: float) -> None:
        self._writer.join(timeout)
