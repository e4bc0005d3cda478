"""The ``containerd`` backend: containerd's own image store is the store.

Reads: an in-memory index of the namespace's images, built from the
images service's List and the manifests and configs read through the
content service, resolved to the configured platform by the same
:class:`crishim.oci.resolve.Resolver` ``oci-dir`` uses. Names follow
containerd's CRI: ``name:tag`` names give repo tags, ``name@digest`` names
repo digests, ``sha256:<id>`` names only the ID. An image whose layers are
not all in the content store is not served (it could not run). The index
follows containerd's events (image create/update/delete, content delete),
applied in batches by a worker thread, with a full re-list every
``resync_interval`` and after every reconnection. ImageStatus never calls
containerd.

Pulls: the shared :class:`crishim.registry.puller.Puller` fetches into a
:class:`~crishim_plugins.containerd.sink.ContainerdSink` (containerd's
content store, under a lease); then the manifests are stored with their
garbage-collection labels and the image records created or updated, named
as containerd's CRI names them (``name:tag``, ``name@<digest>``,
``sha256:<config digest>``) and labelled ``io.cri-containerd.image=managed``
(plus the CRI pin label when the config pins the image), so containerd's
CRI finds the image that kubelet's CreateContainer names. The lease ends
once the records reference everything.

Removal deletes every image record of the image in the namespace (the last
one synchronously, so containerd's garbage collector reclaims the blobs
before the call returns).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import grpc

from crishim import reference
from crishim.errors import Unavailable
from crishim.index import merge_records
from crishim.model import FilesystemUsage, ImageRecord
from crishim.oci.atomic import fault_point
from crishim.oci.resolve import EntryResult, MissingBlob, Resolver
from crishim.oci.spec import CONTAINERD_NAME, INDEX_TYPES
from crishim.reference import Reference, RefKind
from crishim.registry.deadline import Deadline
from crishim.registry.plan import ImageSource, Plan, Progress
from crishim.registry.pulling import Pulling
from crishim.types import BackendContext, ImportRequest, IndexedBackend, PullRequest

from .api.events import content_pb2 as content_events
from .api.events import image_pb2 as image_events
from .api.services.events.v1 import events_pb2
from .api.services.images.v1 import images_pb2
from .api.types import descriptor_pb2
from .client import ContainerdClient
from .options import DEFAULT_NAMESPACE as CRI_NAMESPACE
from .options import ContainerdOptions
from .sink import DISTRIBUTION_SOURCE, ContainerdSink, gc_labels
from .unpack import Unpacker

log = logging.getLogger(__name__)

#: The label containerd's CRI puts on images it manages.
CRI_IMAGE_LABEL = "io.cri-containerd.image"
CRI_IMAGE_MANAGED = "managed"
#: The label containerd's CRI (1.7 and later) reads as "pinned".
CRI_PINNED_LABEL = "io.cri-containerd.pinned"
CRI_PINNED = "pinned"
#: Seconds a pull waits for containerd's CRI plugin to see the image it named.
CRI_WAIT = 5.0


@dataclass(frozen=True, slots=True)
class Named:
    """One containerd image record, resolved."""

    target: str
    pinned: bool
    result: EntryResult


class ContentReader:
    """The resolver's BlobReader over containerd's content service."""

    def __init__(self, backend: ContainerdBackend) -> None:
        self.backend = backend
        self.source = f"containerd {backend.options.address} namespace {backend.options.namespace}"

    def read_blob(self, digest: str, limit: int) -> bytes:
        data = self.backend.client.read(digest, limit)
        if data is None:
            raise MissingBlob(digest)
        return data

    def blob_size(self, digest: str) -> int:
        return self.backend.blob_size(digest)


class ContainerdBackend(IndexedBackend):
    """Serves and pulls into one containerd namespace."""

    def __init__(self, context: BackendContext, options: ContainerdOptions) -> None:
        super().__init__(context)
        self.options = options
        self.client = ContainerdClient(
            context.name, options.address, options.namespace, options.call_timeout
        )
        self.tracer = context.tracer_provider.get_tracer(__name__)
        #: The registry client and the puller, with the steps around a commit.
        self.pulling = Pulling(context, options, self.tracer)
        self.resolver = Resolver(
            ContentReader(self),
            context.platform,
            tag_digests=False,
            extra={"containerdNamespace": options.namespace},
            artifacts=options.artifacts,
        )
        self._names: dict[str, Named] = {}
        self._sizes: dict[str, int] = {}
        self._lock = threading.RLock()  # one index update at a time
        self._pending: set[str] = set()
        self._pending_all = False
        self._pending_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._stream: Any = None
        self._threads: list[threading.Thread] = []
        #: Bumped on every published index; tests and tools wait on it.
        self.generation = 0
        #: Set while the event stream is connected.
        self.following = threading.Event()

    # -- lifecycle -------------------------------------------------------

    def start(self) -> None:
        _claim_namespace(self)
        self.client.connect()
        self.pulling.start()
        started = time.monotonic()
        try:
            version = self.client.version()
            self.resync()
        except Unavailable as exc:
            log.warning("backend %s: %s; serving no images until it answers", self.name, exc)
        else:
            log.info(
                "backend %s: containerd %s at %s, namespace %s: %d images in %.2fs",
                self.name,
                version,
                self.options.address,
                self.options.namespace,
                len(self.index),
                time.monotonic() - started,
            )
        for target, what in ((self._follow, "events"), (self._work, "index")):
            thread = threading.Thread(target=target, name=f"{self.name}-{what}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        stream = self._stream
        if stream is not None:
            stream.cancel()
        for thread in self._threads:
            thread.join(timeout=5)
        self.pulling.close()
        self.client.close()
        _release_namespace(self)

    # -- the index -------------------------------------------------------

    def blob_size(self, digest: str) -> int:
        size = self._sizes.get(digest)
        if size is None:
            info = self.client.info(digest)
            if info is None:
                raise MissingBlob(digest)
            size = self._sizes[digest] = info.size
        return size

    def resync(self) -> None:
        """List every image again and publish; unchanged records are reused."""
        with self._lock:
            images = self.client.list_images()
            self._sizes = self.client.sizes()
            previous = self._names
            names: dict[str, Named] = {}
            try:
                for image in images:
                    known = previous.get(image.name)
                    if (
                        known is not None
                        and known.target == image.target.digest
                        and known.result.record is not None
                        and all(d in self._sizes for d in known.result.closure)
                    ):
                        names[image.name] = replace(known, pinned=_pinned(image.labels))
                    else:
                        names[image.name] = self._resolve(image)
            finally:
                self.resolver.clear()
            self._names = names
            self._publish()
        self._reconcile_pins(images)

    def refresh(self, names: Iterable[str]) -> None:
        """Read these image records again (gone ones are dropped) and publish."""
        with self._lock:
            current = dict(self._names)
            try:
                for name in names:
                    image = self.client.get_image(name)
                    if image is None:
                        current.pop(name, None)
                    else:
                        current[name] = self._resolve(image)
            finally:
                self.resolver.clear()
            self._names = current
            self._publish()

    def _resolve(self, image: images_pb2.Image) -> Named:
        target = image.target
        entry: dict[str, Any] = {
            "mediaType": target.media_type,
            "digest": target.digest,
            "size": target.size,
        }
        if _is_name(image.name):
            entry["annotations"] = {CONTAINERD_NAME: image.name}
        result = self.resolver.resolve(entry)
        if result.problem:
            log.debug("backend %s: image %s not served: %s", self.name, image.name, result.problem)
        return Named(target.digest, _pinned(image.labels), result)

    def _publish(self) -> None:
        """Merge the records of all names by image ID and publish the index; lock held."""
        by_id: dict[str, ImageRecord] = {}
        pinned: set[str] = set()
        for named in self._names.values():
            record = named.result.record
            if record is None:
                continue
            if named.pinned:
                pinned.add(record.id)
            seen = by_id.get(record.id)
            by_id[record.id] = record if seen is None else merge_records(seen, record)
        self.publish(replace(r, pinned=True) if r.id in pinned else r for r in by_id.values())
        self.generation += 1

    def _reconcile_pins(self, images: Sequence[images_pb2.Image]) -> None:
        """Give images the config pins containerd's CRI pin label as well."""
        for image in images:
            if _pinned(image.labels):
                continue
            named = self._names.get(image.name)
            record = named.result.record if named is not None else None
            if record is None or not self.context.is_pinned(
                (*record.repo_tags, *record.repo_digests)
            ):
                continue
            try:
                self.client.label_image(image.name, {CRI_PINNED_LABEL: CRI_PINNED})
            except Exception as exc:
                log.warning("backend %s: cannot label %s pinned: %s", self.name, image.name, exc)

    # -- following containerd ---------------------------------------------

    def _filters(self) -> list[str]:
        namespace = self.options.namespace
        return [f'namespace=="{namespace}",topic~="^/(images|content)/"']

    def _follow(self) -> None:
        """Read containerd's events; reconnect with back-off when the stream breaks."""
        delay = 0.2
        while not self._stop.is_set():
            try:
                self._stream = stream = self.client.subscribe(self._filters())
                # whatever happened before this subscription was missed: list again
                self._request(full=True)
                for envelope in stream:
                    if not self.following.is_set():
                        self.following.set()
                        delay = 0.2
                    self._on_event(envelope)
            except grpc.RpcError as exc:
                if self._stop.is_set():
                    return
                code = exc.code() if isinstance(exc, grpc.Call) else None
                if self.following.is_set() or code is not grpc.StatusCode.UNAVAILABLE:
                    log.warning(
                        "backend %s: containerd's event stream at %s broke (%s); reconnecting",
                        self.name,
                        self.options.address,
                        code.name if code is not None else exc,
                    )
            self.following.clear()
            self._stop.wait(delay)
            delay = min(delay * 2, self.options.max_reconnect_delay)

    def _on_event(self, envelope: events_pb2.Envelope) -> None:
        topic = envelope.topic
        value = envelope.event.value
        if topic in ("/images/create", "/images/update"):
            name = (
                image_events.ImageCreate.FromString(value).name
                if topic == "/images/create"
                else image_events.ImageUpdate.FromString(value).name
            )
            self._request(names=[name])
        elif topic == "/images/delete":
            self._request(names=[image_events.ImageDelete.FromString(value).name])
        elif topic == "/content/delete":
            digest = content_events.ContentDelete.FromString(value).digest
            self._sizes.pop(digest, None)
            affected = [n for n, e in self._names.items() if digest in e.result.closure]
            if affected:
                self._request(names=affected)

    def _request(self, names: Iterable[str] = (), full: bool = False) -> None:
        with self._pending_lock:
            self._pending.update(names)
            self._pending_all = self._pending_all or full
        self._wake.set()

    def _work(self) -> None:
        """Apply the changes the events asked for, in batches; re-list periodically."""
        interval = self.options.resync_interval
        next_full = time.monotonic() + interval
        while not self._stop.is_set():
            self._wake.wait(timeout=max(0.0, next_full - time.monotonic()))
            self._wake.clear()
            if self._stop.is_set():
                return
            with self._pending_lock:
                names, full = self._pending, self._pending_all
                self._pending, self._pending_all = set(), False
            if time.monotonic() >= next_full:
                full = True
            try:
                if full:
                    self.resync()
                    next_full = time.monotonic() + interval
                elif names:
                    self.refresh(names)
            except Unavailable as exc:
                log.debug("backend %s: index update postponed: %s", self.name, exc)
                # the reconnection asks for a full re-list
            except Exception:
                log.exception("backend %s: updating the index failed", self.name)

    # -- calls -----------------------------------------------------------

    def filesystem_usage(self) -> Sequence[FilesystemUsage]:
        return self.client.image_filesystems()

    def remove_image(self, record: ImageRecord) -> None:
        with self._lock:
            names = [
                name
                for name, named in self._names.items()
                if named.result.record is not None and named.result.record.id == record.id
            ]
        for i, name in enumerate(names):
            self.client.delete_image(name, sync=i == len(names) - 1)
        if names:
            self.refresh(names)
            log.info("backend %s: removed %s (%d names)", self.name, record.id, len(names))

    # -- pulling ---------------------------------------------------------

    def pull_image(self, request: PullRequest) -> ImageRecord:
        def store(session: ImageSource, ref: Reference) -> ImageRecord:
            return self._store(session, ref, request.progress, request.deadline, request=request)

        return self.pulling.pull(self, request, store)

    def import_image(self, request: ImportRequest) -> ImageRecord:
        def store(source: ImageSource, ref: Reference) -> ImageRecord:
            return self._store(source, ref, request.progress, None, labels={})

        return self.pulling.import_image(request, store)

    def _store(
        self,
        source: ImageSource,
        ref: Reference,
        progress: Progress | None,
        deadline_at: float | None,
        labels: Mapping[str, str] | None = None,
        request: PullRequest | None = None,
    ) -> ImageRecord:
        """Fetch what ``source`` holds for ``ref`` into containerd and name it
        (``request``: the pull's, whose image policies judge the plan first)."""
        plan = self.pulling.puller.prepare(source, ref, request)
        if labels is None:
            labels = {f"{DISTRIBUTION_SOURCE}{ref.domain}": ref.path}
        with ContainerdSink(
            self.client,
            ttl=self.options.lease_ttl,
            what=source.deadline.what,
            source_labels=labels,
            deadline=deadline_at,
        ) as sink:

            def attempt() -> ImageRecord | None:
                self._fetch(source, plan, sink, progress)
                return self._commit(ref, plan, sink, source.deadline)

            return self.pulling.until_committed(
                attempt,
                ref,
                lost="collected",
                gave_up=f"{source.deadline.what}: containerd kept collecting the blobs; try again",
            )

    def _fetch(
        self, source: ImageSource, plan: Plan, sink: ContainerdSink, progress: Progress | None
    ) -> None:
        """Fetch every blob of the plan; unpack the layers meanwhile (``unpack``).

        An artifact's layers are not a filesystem: they are never unpacked.
        """
        puller = self.pulling.puller
        if not self.options.unpack or plan.artifact_type:
            puller.fetch(source, plan, sink, progress)
            return
        unpacker = Unpacker(
            self.client,
            sink,
            plan,
            self.options.snapshotter,
            source.deadline,
            self.options.unpack_timeout,
        )
        unpacker.start()
        try:
            puller.fetch(source, plan, sink, unpacker.watch(progress))
        except BaseException:
            unpacker.stop()
            raise
        with self.tracer.start_as_current_span(
            "containerd.unpack",
            attributes={"crishim.snapshotter": self.options.snapshotter},
        ) as span:
            top = unpacker.wait()
            span.set_attribute("oci.chain_id", top)

    def _commit(
        self, ref: Reference, plan: Plan, sink: ContainerdSink, deadline: Deadline
    ) -> ImageRecord | None:
        """Store the manifests and name the image; None when blobs went missing."""
        deadline.check()
        names = plan.names(ref)
        labels = {CRI_IMAGE_LABEL: CRI_IMAGE_MANAGED}
        if self.context.is_pinned(names):
            labels[CRI_PINNED_LABEL] = CRI_PINNED
        # the ID record: sha256:<config digest>, or an artifact's manifest digest
        # (artifacts with the empty config would share a config digest)
        records = [*names, plan.image_id]
        with self.tracer.start_as_current_span(
            "registry.commit",
            attributes={"oci.digest": plan.top.digest, "crishim.image.names": records},
        ):
            if sink.missing(plan.sizes()):
                return None
            for document in plan.documents:
                children = plan.children(document)
                sink.put(
                    document.digest,
                    document.data,
                    gc_labels(children, index=document.media_type in INDEX_TYPES),
                )
            fault_point("containerd:before-images")
            target = descriptor_pb2.Descriptor(
                media_type=plan.top.media_type, digest=plan.top.digest, size=len(plan.top.data)
            )
            for name in records:
                self.client.put_image(name, target, labels)
            if (
                self.options.namespace == CRI_NAMESPACE
                and not plan.artifact_type
                and self.client.cri_knows(plan.config.digest, CRI_WAIT) is False
            ):
                log.warning(
                    "backend %s: containerd's CRI did not report %s within %.0fs of its "
                    "creation; a CreateContainer right now may not find it",
                    self.name,
                    plan.config.digest,
                    CRI_WAIT,
                )
        self.refresh(records)
        record = self.index.get(ref)
        if record is None:
            with self._lock:
                named = self._names.get(names[0])
            problem = named.result.problem if named is not None else "containerd lost it"
            from crishim.errors import BackendError

            raise BackendError(self.name, f"pull {ref}: stored, but {problem or 'not served'}")
        log.info("backend %s: pulled %s as %s", self.name, ref, record.id)
        return record


#: (address, namespace) -> (backend name, platform) of the containerd backends
#: started in this process: the names of one namespace are one platform's.
_NAMESPACES: dict[tuple[str, str], tuple[str, str]] = {}
_NAMESPACES_LOCK = threading.Lock()


def _claim_namespace(backend: ContainerdBackend) -> None:
    """Refuse to start a second backend on a namespace another platform's backend serves.

    A containerd namespace has one image per name; two backends of
    different platforms (two runtime handlers) writing one namespace would
    name each other's images. Give each platform a namespace of its own.
    """
    key = (backend.options.address, backend.options.namespace)
    platform = str(backend.context.platform)
    with _NAMESPACES_LOCK:
        owner = _NAMESPACES.setdefault(key, (backend.name, platform))
    if owner[1] != platform and owner[0] != backend.name:
        from crishim.errors import BackendError

        raise BackendError(
            backend.name,
            f"containerd namespace {key[1]} at {key[0]} is served by backend {owner[0]} for "
            f"platform {owner[1]}; this backend is for {platform}: the names of one namespace "
            "name one platform's images, so give this backend a namespace of its own "
            "(options.namespace)",
        )


def _release_namespace(backend: ContainerdBackend) -> None:
    key = (backend.options.address, backend.options.namespace)
    with _NAMESPACES_LOCK:
        if _NAMESPACES.get(key, ("", ""))[0] == backend.name:
            del _NAMESPACES[key]


def _pinned(labels: Mapping[str, str]) -> bool:
    return labels.get(CRI_PINNED_LABEL) == CRI_PINNED


def _is_name(name: str) -> bool:
    """Whether a containerd image name is a reference name (not an ID, not junk)."""
    try:
        ref = reference.parse(name)
    except reference.ReferenceError:
        return False
    return ref.kind is RefKind.NAME
