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
"""

from __future__ import annotations

import json
import logging
import marshal
import sys
import zlib
from pathlib import Path
from typing import Any, NamedTuple

from crishim.model import NO_ANNOTATIONS, FilesystemUsage, ImageRecord
from crishim.oci.atomic import atomic_write
from crishim.oci.layout import EntryResult

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
