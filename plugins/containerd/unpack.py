"""Unpacking a pull's layers into containerd's snapshotter while the pull runs.

containerd's CRI creates a container's root filesystem from the image's
top snapshot (named by the chain ID of its layers); an image nobody
unpacked is unpacked by containerd at the first CreateContainer, after
kubelet's PullImage returned. containerd's own pull unpacks as it fetches;
so does this: each layer is applied, as soon as its blob is in the content
store and the layer below it is unpacked, through containerd's snapshots
service (Prepare on the parent, Commit as the chain ID) and diff service
(Apply, which decompresses and checks the layer), the way containerd's
unpacker does it, under the pull's lease. The later layers keep
downloading meanwhile.

When every layer is unpacked the config is labelled
``containerd.io/gc.ref.snapshot.<snapshotter>`` with the top chain ID, so
containerd's garbage collector keeps the snapshots as long as the image,
and each layer ``containerd.io/uncompressed`` with its diff ID.

A layer that unpacks to something other than the diff ID the config
promises is DATA_LOSS. Any other unpacking failure is logged and left to
containerd (which unpacks at CreateContainer); the pull goes on.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
from typing import Any

from crishim.errors import Cancelled, CrishimError, DataLoss, DeadlineExceeded
from crishim.oci.spec import chain_id, is_valid_digest
from crishim.registry.client import Deadline
from crishim.registry.puller import Plan, Progress
from crishim.types import PullProgress

from .api.types import descriptor_pb2
from .client import ContainerdClient
from .sink import ContainerdSink

log = logging.getLogger(__name__)

GC_SNAPSHOT = "containerd.io/gc.ref.snapshot."
UNCOMPRESSED = "containerd.io/uncompressed"
SNAPSHOT_REF = "containerd.io/snapshot.ref"
#: How often a waiting unpacker looks at the pull's deadline.
POLL = 0.2


class Unpacker:
    """Unpacks one pull's layers, in order, as their blobs arrive."""

    def __init__(
        self,
        client: ContainerdClient,
        sink: ContainerdSink,
        plan: Plan,
        snapshotter: str,
        deadline: Deadline,
        timeout: float,
    ) -> None:
        self.client = client
        self.sink = sink
        self.plan = plan
        self.snapshotter = snapshotter
        self.deadline = deadline
        self.timeout = timeout
        self._arrived: dict[str, threading.Event] = {
            d.digest: threading.Event() for d, _ in plan.blobs()
        }
        self._stop = threading.Event()
        self._failure: BaseException | None = None
        self._thread: threading.Thread | None = None
        #: The top snapshot's name once every layer is unpacked.
        self.top = ""

    def watch(self, progress: Progress | None) -> Progress:
        """A progress callback that also tells the unpacker which blobs are stored."""

        def seen(event: PullProgress) -> None:
            if event.state in ("done", "exists"):
                arrived = self._arrived.get(event.digest)
                if arrived is not None:
                    arrived.set()
            if progress is not None:
                progress(event)

        return seen

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="containerd-unpack", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """The pull failed: stop at the next layer boundary and wait."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def wait(self) -> str:
        """Wait for the last layer; the top snapshot's name ("" when not unpacked)."""
        if self._thread is not None:
            self._thread.join()
        if isinstance(self._failure, CrishimError):
            raise self._failure
        return self.top

    # -- the work ----------------------------------------------------------

    def _wait_for(self, digest: str) -> bool:
        arrived = self._arrived[digest]
        while not arrived.wait(POLL):
            if self._stop.is_set():
                return False
            self.deadline.check()
        return not self._stop.is_set()

    def _run(self) -> None:
        what = self.deadline.what
        try:
            self._unpack()
        except (DataLoss, DeadlineExceeded, Cancelled) as exc:
            self._failure = exc
        except Exception as exc:
            log.warning(
                "%s: unpacking into %s failed, containerd unpacks at the first container: %s",
                what,
                self.snapshotter,
                exc,
            )

    def _diff_ids(self) -> list[str]:
        config = self.plan.config
        data = self.client.read(config.digest, config.size)
        if data is None:
            raise DataLoss(f"{self.deadline.what}: the config {config.digest} went missing")
        try:
            parsed: Any = json.loads(data)
        except (ValueError, RecursionError):
            raise DataLoss(f"{self.deadline.what}: the config is not JSON") from None
        rootfs = parsed.get("rootfs") if isinstance(parsed, dict) else None
        diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
        layers = self.plan.layers
        if (
            not isinstance(diff_ids, list)
            or len(diff_ids) != len(layers)
            or not all(isinstance(d, str) and is_valid_digest(d) for d in diff_ids)
        ):
            raise DataLoss(
                f"{self.deadline.what}: the config's rootfs.diff_ids do not match its "
                f"{len(layers)} layers"
            )
        return diff_ids

    def _unpack(self) -> None:
        if not self._wait_for(self.plan.config.digest):
            return
        diff_ids = self._diff_ids()
        parent = ""
        for i, layer in enumerate(self.plan.layers):
            chain = chain_id(diff_ids[: i + 1])
            if self.client.snapshot_exists(self.snapshotter, chain):
                # another image's: the pull's lease keeps it until the config references it
                kind = f"snapshots/{self.snapshotter}"
                self.client.lease_resources(self.sink.lease, [(chain, kind)])
                self.sink.hold_snapshot(self.snapshotter, chain)
            else:
                if not self._wait_for(layer.digest):
                    return
                self._apply(layer.digest, layer.size, layer.media_type, diff_ids[i], parent, chain)
            parent = chain
        labels = {f"{GC_SNAPSHOT}{self.snapshotter}": parent} if parent else {}
        if labels:
            self.client.label_content(self.plan.config.digest, labels)
        for layer, diff_id in zip(self.plan.layers, diff_ids, strict=True):
            self.client.label_content(layer.digest, {UNCOMPRESSED: diff_id})
        self.top = parent

    def _apply(
        self, digest: str, size: int, media_type: str, diff_id: str, parent: str, chain: str
    ) -> None:
        # the lease stays until the snapshot is committed under it
        lease = self.sink._begin_write()
        key = f"extract-{secrets.token_hex(6)} {chain}"
        committed = False
        try:
            mounts = self.client.prepare_snapshot(
                self.snapshotter, key, parent, {SNAPSHOT_REF: chain}, lease
            )
            layer = descriptor_pb2.Descriptor(media_type=media_type, digest=digest, size=size)
            remaining = self.deadline.remaining()
            timeout = (
                self.timeout if remaining is None else max(0.001, min(remaining, self.timeout))
            )
            applied = self.client.apply_layer(layer, mounts, lease, timeout)
            if applied != diff_id:
                raise DataLoss(
                    f"{self.deadline.what}: layer {digest} unpacks to {applied}, "
                    f"but the config says {diff_id}"
                )
            committed = self.client.commit_snapshot(
                self.snapshotter, chain, key, {SNAPSHOT_REF: chain}, lease
            )
            self.sink.hold_snapshot(self.snapshotter, chain)
        finally:
            if not committed:
                # failed, or another unpacker committed this chain first
                self.client.remove_snapshot(self.snapshotter, key)
            self.sink._end_write(lease)
