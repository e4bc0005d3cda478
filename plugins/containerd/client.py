"""Talking to containerd over its own gRPC API: images, content, leases, events.

One channel per backend to containerd's socket. Every call carries the
namespace header (``containerd-namespace``) and, for writes under a pull,
the lease header (``containerd-lease``); every unary call has a timeout.
gRPC errors become :mod:`crishim.errors` exceptions that name containerd's
address, never a credential (none travels here). Content is written
through :class:`~crishim_plugins.containerd.write.WriteStream`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import grpc
from google.protobuf import field_mask_pb2

from crishim.cri.runtime.v1 import api_pb2 as cri_pb2
from crishim.cri.runtime.v1 import api_pb2_grpc as cri_grpc
from crishim.cri_messages import image_fs_info
from crishim.errors import BackendError, CrishimError, Unavailable
from crishim.model import FilesystemUsage

from .api.services.content.v1 import content_pb2, content_pb2_grpc
from .api.services.diff.v1 import diff_pb2, diff_pb2_grpc
from .api.services.events.v1 import events_pb2, events_pb2_grpc
from .api.services.images.v1 import images_pb2, images_pb2_grpc
from .api.services.leases.v1 import leases_pb2, leases_pb2_grpc
from .api.services.snapshots.v1 import snapshots_pb2, snapshots_pb2_grpc
from .api.services.version.v1 import version_pb2_grpc
from .api.types import descriptor_pb2, mount_pb2
from .write import WriteStream

log = logging.getLogger(__name__)
T = TypeVar("T")

_NOT_FOUND = frozenset({grpc.StatusCode.NOT_FOUND})
_ALREADY_EXISTS = frozenset({grpc.StatusCode.ALREADY_EXISTS})

NAMESPACE_HEADER = "containerd-namespace"
LEASE_HEADER = "containerd-lease"
MAX_MESSAGE = 32 * 1024 * 1024


def status_of(exc: grpc.RpcError) -> grpc.StatusCode | None:
    """The status code of a failed call (None when grpc did not say)."""
    return exc.code() if isinstance(exc, grpc.Call) else None


def details_of(exc: grpc.RpcError) -> str:
    """The message of a failed call ("" when grpc did not say)."""
    return (exc.details() if isinstance(exc, grpc.Call) else "") or ""


class ContainerdError(BackendError):
    """containerd refused or failed a call (not a connection problem)."""

    def __init__(self, backend: str, message: str, code: grpc.StatusCode) -> None:
        super().__init__(backend, message)
        self.code = code


class ContainerdClient:
    """The calls the containerd backend makes, typed, with errors mapped."""

    def __init__(self, backend: str, address: str, namespace: str, timeout: float) -> None:
        self.backend = backend
        self.address = address
        self.namespace = namespace
        self.timeout = timeout
        self._channel: grpc.Channel | None = None
        self.images: images_pb2_grpc.ImagesStub
        self.content: content_pb2_grpc.ContentStub
        self.leases: leases_pb2_grpc.LeasesStub
        self.events: events_pb2_grpc.EventsStub
        self.version_service: version_pb2_grpc.VersionStub
        self.snapshots: snapshots_pb2_grpc.SnapshotsStub
        self.diff: diff_pb2_grpc.DiffStub
        self.cri_images: cri_grpc.ImageServiceStub

    # -- the channel -----------------------------------------------------

    def connect(self) -> None:
        """Open the channel (lazily connecting: containerd may be down now)."""
        target = "unix:" + self.address.removeprefix("unix://")
        self._channel = grpc.insecure_channel(
            target,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE),
                ("grpc.max_send_message_length", MAX_MESSAGE),
                # reconnect quickly after containerd restarts
                ("grpc.initial_reconnect_backoff_ms", 200),
                ("grpc.max_reconnect_backoff_ms", 2000),
            ],
        )
        self.images = images_pb2_grpc.ImagesStub(self._channel)
        self.content = content_pb2_grpc.ContentStub(self._channel)
        self.leases = leases_pb2_grpc.LeasesStub(self._channel)
        self.events = events_pb2_grpc.EventsStub(self._channel)
        self.version_service = version_pb2_grpc.VersionStub(self._channel)
        self.snapshots = snapshots_pb2_grpc.SnapshotsStub(self._channel)
        self.diff = diff_pb2_grpc.DiffStub(self._channel)
        self.cri_images = cri_grpc.ImageServiceStub(self._channel)

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def metadata(self, lease: str = "") -> tuple[tuple[str, str], ...]:
        if lease:
            return ((NAMESPACE_HEADER, self.namespace), (LEASE_HEADER, lease))
        return ((NAMESPACE_HEADER, self.namespace),)

    def error(self, exc: grpc.RpcError, what: str) -> CrishimError:
        """A domain error for a failed call to containerd."""
        code = status_of(exc) or grpc.StatusCode.UNKNOWN
        details = details_of(exc) or str(code)
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return Unavailable(
                f"backend {self.backend!r}: containerd at {self.address} is unreachable "
                f"({what}: {code.name}: {details[:300]})"
            )
        return ContainerdError(
            self.backend, f"containerd at {self.address}: {what}: {details[:300]}", code
        )

    def call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except grpc.RpcError as exc:
            raise self.error(exc, what) from None

    def _unary(
        self,
        what: str,
        method: Callable[..., Any],
        request: Any,
        *,
        lease: str = "",
        timeout: float | None = None,
        absent: frozenset[grpc.StatusCode] = frozenset(),
    ) -> Any:
        """``method(request)`` in the namespace (and ``lease``), with the call timeout
        (or ``timeout``); None when containerd answers a code in ``absent``."""
        try:
            return method(
                request,
                metadata=self.metadata(lease),
                timeout=self.timeout if timeout is None else timeout,
            )
        except grpc.RpcError as exc:
            if status_of(exc) in absent:
                return None
            raise self.error(exc, what) from None

    def _optional(
        self, what: str, method: Callable[..., Any], request: Any, lease: str = ""
    ) -> Any:
        """:meth:`_unary`, None when containerd says NOT_FOUND."""
        return self._unary(what, method, request, lease=lease, absent=_NOT_FOUND)

    def _created(
        self, what: str, method: Callable[..., Any], request: Any, lease: str = ""
    ) -> bool:
        """:meth:`_unary` for a call that makes something; False when it exists already."""
        done = self._unary(what, method, request, lease=lease, absent=_ALREADY_EXISTS)
        return done is not None

    # -- version ---------------------------------------------------------

    def version(self) -> str:
        from google.protobuf import empty_pb2

        response = self.call(
            "Version",
            lambda: self.version_service.Version(empty_pb2.Empty(), timeout=self.timeout),
        )
        return f"{response.version} ({response.revision})"

    # -- images ----------------------------------------------------------

    def list_images(self) -> list[images_pb2.Image]:
        response = self._unary("Images.List", self.images.List, images_pb2.ListImagesRequest())
        return list(response.images)

    def get_image(self, name: str) -> images_pb2.Image | None:
        request = images_pb2.GetImageRequest(name=name)
        response = self._optional(f"Images.Get {name}", self.images.Get, request)
        return None if response is None else response.image

    def put_image(
        self, name: str, target: descriptor_pb2.Descriptor, labels: Mapping[str, str]
    ) -> None:
        """Create the image record, or point an existing one at ``target`` with ``labels`` set."""
        image = images_pb2.Image(name=name, labels=dict(labels), target=target)
        request = images_pb2.CreateImageRequest(image=image)
        if self._created(f"Images.Create {name}", self.images.Create, request):
            return
        self._update_image(image, ["target", *(f"labels.{k}" for k in labels)])

    def label_image(self, name: str, labels: Mapping[str, str]) -> None:
        """Set these labels on an image record, leaving the rest as it is."""
        image = images_pb2.Image(name=name, labels=dict(labels))
        self._update_image(image, [f"labels.{k}" for k in labels])

    def _update_image(self, image: images_pb2.Image, paths: list[str]) -> None:
        mask = field_mask_pb2.FieldMask(paths=paths)
        request = images_pb2.UpdateImageRequest(image=image, update_mask=mask)
        self._unary(f"Images.Update {image.name}", self.images.Update, request)

    def delete_image(self, name: str, *, sync: bool = False) -> bool:
        """Delete an image record; False when there was none. ``sync`` waits for the GC."""
        request = images_pb2.DeleteImageRequest(name=name, sync=sync)
        return self._optional(f"Images.Delete {name}", self.images.Delete, request) is not None

    # -- content ---------------------------------------------------------

    def info(self, digest: str) -> content_pb2.Info | None:
        request = content_pb2.InfoRequest(digest=digest)
        response = self._optional(f"Content.Info {digest}", self.content.Info, request)
        return None if response is None else response.info

    def sizes(self) -> dict[str, int]:
        """Every blob in the store, digest to size (one streamed call)."""

        def list_all() -> dict[str, int]:
            out: dict[str, int] = {}
            for response in self.content.List(
                content_pb2.ListContentRequest(), metadata=self.metadata(), timeout=self.timeout
            ):
                for info in response.info:
                    out[info.digest] = info.size
            return out

        return self.call("Content.List", list_all)

    def read(self, digest: str, size: int) -> bytes | None:
        """The first ``size`` bytes of a blob; None when it is missing."""

        def read_all(request: content_pb2.ReadContentRequest, **call: Any) -> bytes:
            chunks = []
            got = 0
            for response in self.content.Read(request, **call):
                chunks.append(response.data)
                got += len(response.data)
                if got >= size:
                    break
            return b"".join(chunks)[:size]

        request = content_pb2.ReadContentRequest(digest=digest, size=size)
        data: bytes | None = self._optional(f"Content.Read {digest}", read_all, request)
        return data

    def label_content(self, digest: str, labels: Mapping[str, str]) -> None:
        """Set these labels on a blob, leaving its other labels as they are."""
        info = content_pb2.Info(digest=digest, labels=dict(labels))
        mask = field_mask_pb2.FieldMask(paths=[f"labels.{k}" for k in labels])
        request = content_pb2.UpdateRequest(info=info, update_mask=mask)
        self._unary(f"Content.Update {digest}", self.content.Update, request)

    def abort(self, ref: str) -> None:
        """Drop an unfinished ingest (absent is fine)."""
        with contextlib.suppress(CrishimError):
            request = content_pb2.AbortRequest(ref=ref)
            self._optional(f"Content.Abort {ref}", self.content.Abort, request)

    def write_stream(self, lease: str, timeout: float | None) -> WriteStream:
        return WriteStream(self, lease, timeout)

    # -- leases ----------------------------------------------------------

    def create_lease(self, lease_id: str, labels: Mapping[str, str]) -> str:
        request = leases_pb2.CreateRequest(id=lease_id, labels=dict(labels))
        response = self._unary("Leases.Create", self.leases.Create, request)
        return str(response.lease.id)

    def delete_lease(self, lease_id: str) -> None:
        request = leases_pb2.DeleteRequest(id=lease_id)
        self._optional(f"Leases.Delete {lease_id}", self.leases.Delete, request)

    def lease_content(self, lease_id: str, digests: Iterable[str]) -> None:
        """Add blobs to a lease, so the garbage collector keeps them while it lives."""
        self.lease_resources(lease_id, ((digest, "content") for digest in digests))

    def lease_resources(self, lease_id: str, resources: Iterable[tuple[str, str]]) -> None:
        """Add (id, type) resources to a lease: ``content``, ``snapshots/<snapshotter>``."""
        for resource_id, kind in resources:
            resource = leases_pb2.Resource(id=resource_id, type=kind)
            request = leases_pb2.AddResourceRequest(id=lease_id, resource=resource)
            self._unary(f"Leases.AddResource {resource_id}", self.leases.AddResource, request)

    def list_leases(self) -> list[leases_pb2.Lease]:
        response = self._unary("Leases.List", self.leases.List, leases_pb2.ListRequest())
        return list(response.leases)

    # -- snapshots and the diff service (unpacking) ------------------------

    def snapshot_exists(self, snapshotter: str, name: str) -> bool:
        request = snapshots_pb2.StatSnapshotRequest(snapshotter=snapshotter, key=name)
        return self._optional(f"Snapshots.Stat {name}", self.snapshots.Stat, request) is not None

    def prepare_snapshot(
        self, snapshotter: str, key: str, parent: str, labels: Mapping[str, str], lease: str
    ) -> list[mount_pb2.Mount]:
        request = snapshots_pb2.PrepareSnapshotRequest(
            snapshotter=snapshotter, key=key, parent=parent, labels=dict(labels)
        )
        response = self._unary(
            f"Snapshots.Prepare {key}", self.snapshots.Prepare, request, lease=lease
        )
        return list(response.mounts)

    def commit_snapshot(
        self, snapshotter: str, name: str, key: str, labels: Mapping[str, str], lease: str
    ) -> bool:
        """Commit an active snapshot under ``name``; False when that name exists already."""
        request = snapshots_pb2.CommitSnapshotRequest(
            snapshotter=snapshotter, name=name, key=key, labels=dict(labels)
        )
        return self._created(f"Snapshots.Commit {name}", self.snapshots.Commit, request, lease)

    def remove_snapshot(self, snapshotter: str, key: str) -> None:
        with contextlib.suppress(CrishimError):
            request = snapshots_pb2.RemoveSnapshotRequest(snapshotter=snapshotter, key=key)
            self._optional(f"Snapshots.Remove {key}", self.snapshots.Remove, request)

    def apply_layer(
        self,
        layer: descriptor_pb2.Descriptor,
        mounts: Sequence[mount_pb2.Mount],
        lease: str,
        timeout: float,
    ) -> str:
        """Unpack a layer blob onto mounts; the digest of what was applied (its diff ID)."""
        request = diff_pb2.ApplyRequest(diff=layer, mounts=list(mounts))
        response = self._unary(
            f"Diff.Apply {layer.digest}", self.diff.Apply, request, lease=lease, timeout=timeout
        )
        return str(response.applied.digest)

    # -- events ----------------------------------------------------------

    def subscribe(self, filters: Sequence[str]) -> Iterator[events_pb2.Envelope]:
        """A cancellable stream of events (no timeout: it lasts until cancelled)."""
        stream: Iterator[events_pb2.Envelope] = self.events.Subscribe(
            events_pb2.SubscribeRequest(filters=list(filters))
        )
        return stream

    # -- containerd's CRI: ImageFsInfo, and seeing what crishim pulled ----

    def cri_knows(self, image_id: str, timeout: float) -> bool | None:
        """Wait (bounded) until containerd's CRI plugin reports the image.

        The plugin learns of new image records from containerd's events, a
        moment after they are made; kubelet's CreateContainer follows
        PullImage at once. True once it is seen, False after ``timeout``,
        None when containerd has no CRI plugin to ask.
        """
        request = cri_pb2.ImageStatusRequest(image=cri_pb2.ImageSpec(image=image_id))
        end = time.monotonic() + timeout
        delay = 0.005
        while True:
            try:
                response = self.cri_images.ImageStatus(request, timeout=self.timeout)
            except grpc.RpcError as exc:
                if status_of(exc) == grpc.StatusCode.UNIMPLEMENTED:
                    return None
                raise self.error(exc, "CRI ImageStatus") from None
            if response.HasField("image"):
                return True
            if time.monotonic() >= end:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def image_filesystems(self) -> list[FilesystemUsage]:
        """What containerd's CRI plugin reports for its image filesystems, then container ones.

        containerd 1.6 reports ``image_filesystems`` only (the snapshotter's
        filesystem); releases that split the image filesystem also report
        ``container_filesystems``, given with ``container=True``.
        """
        response = self.call(
            "CRI ImageFsInfo",
            lambda: self.cri_images.ImageFsInfo(cri_pb2.ImageFsInfoRequest(), timeout=self.timeout),
        )
        return image_fs_info(response)
