"""The puller's blob sink for containerd: its content store, under a pull's lease.

Every blob of a pull is written (or, when containerd already holds it,
added) under one lease, so containerd's garbage collector leaves the
pull's blobs alone until the image records reference them; the lease
carries ``containerd.io/gc.expire``, so it ends by itself if crishim dies
mid-pull. A pull that runs past half the lease's life moves its blobs to a
fresh lease.

Blobs are verified while they stream: containerd hashes what it is sent as
it writes, and the COMMIT carries the expected size and digest, so a blob
whose content is wrong is refused there (DATA_LOSS) and never becomes
visible; the size is also counted here, so a registry sending too much is
cut off at once. (Hashing every byte a second time in crishim would cost a
core's worth of work per gigabyte and prove nothing more.) Manifests and indexes are committed
with the garbage-collection labels containerd's own pull sets
(``containerd.io/gc.ref.content.*``), so the image keeps its children.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Iterable, Mapping

import grpc

from crishim.errors import Unavailable
from crishim.oci.spec import check_digest
from crishim.oci.store import BlobMismatch

from .api.services.content.v1 import content_pb2
from .client import ContainerdClient, details_of, status_of
from .write import WRITE_CHUNK, WriteStream

log = logging.getLogger(__name__)

GC_EXPIRE = "containerd.io/gc.expire"
GC_CONFIG = "containerd.io/gc.ref.content.config"
GC_LAYER = "containerd.io/gc.ref.content.l."
GC_MANIFEST = "containerd.io/gc.ref.content.m."
DISTRIBUTION_SOURCE = "containerd.io/distribution.source."
#: Marks the leases crishim makes, so an operator can tell them apart.
LEASE_OWNER = "io.crishim.pull"


def _rfc3339(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


class ContainerdSink:
    """One pull's view of containerd's content store (a BlobSink)."""

    def __init__(
        self,
        client: ContainerdClient,
        *,
        ttl: float,
        what: str,
        source_labels: Mapping[str, str] | None = None,
        deadline: float | None = None,
    ) -> None:
        self.client = client
        self.ttl = ttl
        self.what = what
        #: Labels every fetched blob gets (where it came from).
        self.source_labels = dict(source_labels or {})
        self.deadline = deadline
        self._lock = threading.Lock()
        #: (id, type) of what the pull holds: blobs, and snapshots it unpacked.
        self._held: set[tuple[str, str]] = set()
        #: The lease new work goes under.
        self.lease = ""
        self._lease_started = 0.0
        #: Every lease of this pull still alive, with the writes still under it
        #: (a write's lease is fixed when it starts; containerd adds the blob to
        #: it at the commit, so it must outlive the write).
        self._leases: dict[str, int] = {}

    # -- the lease -------------------------------------------------------

    def __enter__(self) -> ContainerdSink:
        self.lease = self._new_lease()
        return self

    def __exit__(self, *exc: object) -> None:
        """End the leases: what no image record references is the GC's now."""
        with self._lock:
            leases, self._leases, self.lease = list(self._leases), {}, ""
        for lease in leases:
            self._end(lease)

    def _end(self, lease: str) -> None:
        try:
            self.client.delete_lease(lease)
        except Exception:
            log.warning("%s: could not delete lease %s; it expires by itself", self.what, lease)

    def _new_lease(self) -> str:
        started = time.time()
        lease_id = f"crishim-pull-{secrets.token_hex(8)}"
        labels = {GC_EXPIRE: _rfc3339(started + self.ttl), LEASE_OWNER: self.what[:200]}
        self.client.create_lease(lease_id, labels)
        self._lease_started = started
        self._leases[lease_id] = 0
        return lease_id

    def _renew_if_old(self) -> None:
        """Past half its life, move what the pull holds to a fresh lease.

        The old lease ends once no write is still under it.
        """
        with self._lock:
            if not self.lease or time.time() - self._lease_started < self.ttl / 2:
                return
            old, held = self.lease, set(self._held)
            self.lease = self._new_lease()
            self.client.lease_resources(self.lease, held)
            done = self._leases.get(old) == 0
            if done:
                del self._leases[old]
        if done:
            self._end(old)

    def _begin_write(self) -> str:
        """The lease a write starts under (counted until :meth:`_end_write`)."""
        self._renew_if_old()
        with self._lock:
            self._leases[self.lease] += 1
            return self.lease

    def _end_write(self, lease: str) -> None:
        with self._lock:
            left = self._leases.get(lease)
            if left is None:
                return
            self._leases[lease] = left - 1
            done = left == 1 and lease != self.lease
            if done:
                del self._leases[lease]
        if done:
            self._end(lease)

    # -- BlobSink ----------------------------------------------------------

    def has(self, digest: str, size: int) -> bool:
        info = self.client.info(digest)
        if info is None or info.size != size:
            return False
        self._renew_if_old()
        self.client.lease_content(self.lease, [digest])
        # it could have been collected between the two calls
        if self.client.info(digest) is None:
            return False
        self._hold(digest)
        return True

    def writer(self, digest: str, size: int) -> ContainerdWriter:
        return ContainerdWriter(self, digest, size, self.source_labels)

    def _hold(self, digest: str) -> None:
        with self._lock:
            self._held.add((digest, "content"))

    def hold_snapshot(self, snapshotter: str, name: str) -> None:
        """A snapshot the pull made (unpacking): kept with its blobs when the lease renews."""
        with self._lock:
            self._held.add((name, f"snapshots/{snapshotter}"))

    def _timeout(self) -> float | None:
        return None if self.deadline is None else max(0.001, self.deadline - time.monotonic())

    # -- documents ---------------------------------------------------------

    def put(self, digest: str, data: bytes, labels: Mapping[str, str]) -> None:
        """Store a manifest or index held in memory with its GC labels (merged if present)."""
        with self.writer(digest, len(data)) as writer:
            writer.labels.update(labels)
            writer.write(data)
            writer.commit()
        if writer.existed and labels:
            self.client.label_content(digest, labels)

    def missing(self, digests: Iterable[str]) -> list[str]:
        """The digests containerd does not hold (checked before naming an image)."""
        return [d for d in digests if self.client.info(d) is None]


def gc_labels(children: Iterable[str], *, index: bool) -> dict[str, str]:
    """The labels that make a manifest (or index) keep its children from the GC."""
    out: dict[str, str] = {}
    for i, digest in enumerate(children):
        if index:
            out[f"{GC_MANIFEST}{i}"] = digest
        elif i == 0:
            out[GC_CONFIG] = digest
        else:
            out[f"{GC_LAYER}{i - 1}"] = digest
    return out


class ContainerdWriter:
    """One blob streamed into containerd (the puller's BlobWriter).

    Bytes are counted here and sent in chunks of at most ``WRITE_CHUNK``;
    ``commit`` refuses a wrong size before containerd sees a COMMIT, and
    containerd refuses a wrong digest at the COMMIT (BlobMismatch either
    way). A blob containerd turns out to hold already (another client
    committed it meanwhile) is taken as it is.
    """

    def __init__(
        self, sink: ContainerdSink, digest: str, size: int, labels: Mapping[str, str]
    ) -> None:
        check_digest(digest)
        self.sink = sink
        self.digest = digest
        self.size = size
        self.labels = dict(labels)
        self.written = 0
        self.existed = False
        self._buffer = bytearray()
        self._sent = 0
        self._done = False
        self.ref = f"crishim-{digest}"
        self.lease = ""
        self._stream: WriteStream | None = None

    def __enter__(self) -> ContainerdWriter:
        self.lease = self.sink._begin_write()
        try:
            self._open()
        except BaseException:
            self.sink._end_write(self.lease)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the stream; a blob not committed is aborted (its ingest dropped)."""
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        if not self._done:
            self.sink.client.abort(self.ref)
        self.sink._end_write(self.lease)

    # -- the stream ----------------------------------------------------

    def _open(self) -> None:
        client = self.sink.client
        for attempt in range(2):
            stream = client.write_stream(self.lease, self.sink._timeout())
            try:
                stream.send(
                    content_pb2.WriteContentRequest(
                        action=content_pb2.STAT,
                        ref=self.ref,
                        total=self.size,
                        expected=self.digest,
                    )
                )
            except grpc.RpcError as exc:
                stream.close()
                if status_of(exc) == grpc.StatusCode.ALREADY_EXISTS:
                    self.existed = True
                    self.sink._hold(self.digest)
                    return
                if attempt == 0 and "locked" in details_of(exc):
                    # another process writes this ref: write under a ref of our own
                    self.ref = f"crishim-{self.digest}-{secrets.token_hex(4)}"
                    continue
                raise client.error(exc, f"Content.Write {self.digest}") from None
            self._stream = stream
            return

    def _send(
        self, request: content_pb2.WriteContentRequest, *, wait: bool = True
    ) -> content_pb2.WriteContentResponse | None:
        assert self._stream is not None
        try:
            if not wait:
                self._stream.push(request)
                return None
            return self._stream.send(request)
        except StopIteration:
            raise Unavailable(
                f"{self.sink.what}: containerd ended the write of {self.digest} early"
            ) from None
        except grpc.RpcError as exc:
            code, details = status_of(exc), details_of(exc)
            if code == grpc.StatusCode.ALREADY_EXISTS:
                raise _Existed from None
            if code == grpc.StatusCode.FAILED_PRECONDITION and "digest" in details:
                raise BlobMismatch(
                    f"blob {self.digest}: the content does not match its digest "
                    f"(containerd: {details[:200]})"
                ) from None
            raise self.sink.client.error(exc, f"Content.Write {self.digest}") from None

    def _flush(self) -> None:
        if not self._buffer:
            return
        data = bytes(self._buffer)
        self._buffer.clear()
        # offset 0 on the first write also truncates a stale ingest of the same ref
        self._send(
            content_pb2.WriteContentRequest(
                action=content_pb2.WRITE, ref=self.ref, offset=self._sent, data=data
            ),
            wait=False,
        )
        self._sent += len(data)

    # -- BlobWriter ----------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.written + len(data) > self.size:
            raise BlobMismatch(
                f"blob {self.digest}: more than the {self.size} bytes its descriptor gives"
            )
        self.written += len(data)
        if self.existed:
            return
        self._buffer += data
        if len(self._buffer) >= WRITE_CHUNK:
            try:
                self._flush()
            except _Existed:
                self.existed = True

    def commit(self) -> bool:
        """Check size and digest, then commit with the labels; True if the blob is new."""
        if self.written != self.size:
            raise BlobMismatch(
                f"blob {self.digest}: got {self.written} bytes, its descriptor gives {self.size}"
            )
        if not self.existed:
            # the last bytes travel with the COMMIT; its offset must be where the
            # ingest stands (offset 0 would truncate it)
            data = bytes(self._buffer)
            self._buffer.clear()
            try:
                self._send(
                    content_pb2.WriteContentRequest(
                        action=content_pb2.COMMIT,
                        ref=self.ref,
                        offset=self._sent,
                        data=data,
                        total=self.size,
                        expected=self.digest,
                        labels=self.labels,
                    )
                )
            except _Existed:
                self.existed = True
        self._done = True
        self.sink._hold(self.digest)
        return not self.existed


class _Existed(Exception):
    """containerd holds the blob already (another writer committed it)."""
