"""The ``containerd`` backend: containerd's own image store is the store.

Reads: an in-memory index of the namespace's images that follows
containerd's events (:class:`~crishim_plugins.containerd.index.ContainerdIndex`).
ImageStatus never calls containerd.

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

from crishim.errors import Unavailable
from crishim.model import FilesystemUsage, ImageRecord
from crishim.oci.atomic import fault_point
from crishim.oci.resolve import Resolver
from crishim.oci.spec import INDEX_TYPES
from crishim.reference import Reference
from crishim.registry.deadline import Deadline
from crishim.registry.plan import ImageSource, Plan, Progress
from crishim.registry.pulling import Pulling
from crishim.types import BackendContext, ImportRequest, IndexedBackend, PullRequest

from .api.types import descriptor_pb2
from .client import ContainerdClient
from .index import CRI_PINNED, CRI_PINNED_LABEL, ContainerdIndex
from .options import DEFAULT_NAMESPACE as CRI_NAMESPACE
from .options import ContainerdOptions
from .sink import DISTRIBUTION_SOURCE, ContainerdSink, gc_labels
from .unpack import Unpacker

log = logging.getLogger(__name__)

#: The label containerd's CRI puts on images it manages.
CRI_IMAGE_LABEL = "io.cri-containerd.image"
CRI_IMAGE_MANAGED = "managed"
#: Seconds a pull waits for containerd's CRI plugin to see the image it named.
CRI_WAIT = 5.0


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
        self.images = ContainerdIndex(
            context.name,
            self.client,
            options,
            lambda reader: Resolver(
                reader,
                context.platform,
                tag_digests=False,
                extra={"containerdNamespace": options.namespace},
                artifacts=options.artifacts,
            ),
            self.publish,
            context.is_pinned,
        )

    @property
    def generation(self) -> int:
        """Bumped on every published index; tests and tools wait on it."""
        return self.images.generation

    @property
    def following(self) -> threading.Event:
        """Set while containerd's event stream is connected."""
        return self.images.following

    def resync(self) -> None:
        """List every image again and publish."""
        self.images.resync()

    def refresh(self, names: Iterable[str]) -> None:
        """Read these image records again (gone ones are dropped) and publish."""
        self.images.refresh(names)

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
        self.images.follow()

    def close(self) -> None:
        self.images.close()
        self.pulling.close()
        self.client.close()
        _release_namespace(self)

    # -- calls -----------------------------------------------------------

    def filesystem_usage(self) -> Sequence[FilesystemUsage]:
        return self.client.image_filesystems()

    def remove_image(self, record: ImageRecord) -> None:
        names = self.images.names_of(record.id)
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
            problem = self.images.problem(names[0])
            if problem is None:
                problem = "containerd lost it"
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
