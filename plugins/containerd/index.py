"""The containerd backend's index: the namespace's images, following containerd's events.

Built from the images service's List and the manifests and configs read
through the content service, resolved to the configured platform by the
same :class:`crishim.oci.resolve.Resolver` ``oci-dir`` uses. Names follow
containerd's CRI: ``name:tag`` names give repo tags, ``name@digest`` names
repo digests, ``sha256:<id>`` names only the ID; the records of one image
are merged by ID and published whole. An image whose layers are not all
in the content store is not served (it could not run).

The index follows containerd's events (image create/update/delete,
content delete): what they name is read again in batches, on a thread of
its own (:class:`crishim.oci.coalesce.Coalesced`), with a full re-list
every ``resync_interval`` and after every reconnection; a re-list reuses
the records whose target and blobs did not change.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import grpc

from crishim import reference
from crishim.errors import Unavailable
from crishim.index import merge_records
from crishim.model import ImageRecord
from crishim.oci.coalesce import Coalesced
from crishim.oci.resolve import EntryResult, MissingBlob, Resolver
from crishim.oci.spec import CONTAINERD_NAME
from crishim.reference import RefKind

from .api.events import content_pb2 as content_events
from .api.events import image_pb2 as image_events
from .api.services.events.v1 import events_pb2
from .api.services.images.v1 import images_pb2
from .client import ContainerdClient
from .options import ContainerdOptions

log = logging.getLogger(__name__)

#: The label containerd's CRI (1.7 and later) reads as "pinned".
CRI_PINNED_LABEL = "io.cri-containerd.pinned"
CRI_PINNED = "pinned"


@dataclass(frozen=True, slots=True)
class Named:
    """One containerd image record, resolved."""

    target: str
    pinned: bool
    result: EntryResult


@dataclass(frozen=True)
class Changes:
    """What the index must read again: these image records, or everything."""

    names: frozenset[str] = frozenset()
    full: bool = False

    def merge(self, other: Changes) -> Changes:
        return Changes(self.names | other.names, self.full or other.full)


class ContentReader:
    """The resolver's BlobReader over containerd's content service."""

    def __init__(self, index: ContainerdIndex) -> None:
        self.index = index
        options = index.options
        self.source = f"containerd {options.address} namespace {options.namespace}"

    def read_blob(self, digest: str, limit: int) -> bytes:
        data = self.index.client.read(digest, limit)
        if data is None:
            raise MissingBlob(digest)
        return data

    def blob_size(self, digest: str) -> int:
        return self.index.blob_size(digest)


class ContainerdIndex:
    """One namespace's images as the backend serves them.

    ``publish`` is the backend's ``IndexedBackend.publish``, ``is_pinned``
    its context's (images the config pins get containerd's CRI pin label).
    """

    def __init__(
        self,
        name: str,
        client: ContainerdClient,
        options: ContainerdOptions,
        resolver: Callable[[ContentReader], Resolver],
        publish: Callable[[Iterable[ImageRecord]], None],
        is_pinned: Callable[[Sequence[str]], bool],
    ) -> None:
        self.name = name
        self.client = client
        self.options = options
        self.resolver = resolver(ContentReader(self))
        self._publish_records = publish
        self._is_pinned = is_pinned
        self._names: dict[str, Named] = {}
        self._sizes: dict[str, int] = {}
        self._lock = threading.RLock()  # one index update at a time
        self._stop = threading.Event()
        # what events ask for, applied in batches by a thread of its own
        self._changes: Coalesced[Changes] = Coalesced(
            f"{name}-index", self._apply, merge=Changes.merge, stop=self._stop
        )
        self._stream: Any = None
        self._threads: list[threading.Thread] = []
        #: Bumped on every published index; tests and tools wait on it.
        self.generation = 0
        #: Set while the event stream is connected.
        self.following = threading.Event()

    # -- lifecycle -------------------------------------------------------

    def follow(self) -> None:
        """Start following containerd's events, and re-listing every ``resync_interval``."""
        for target, what in ((self._follow, "events"), (self._resync_loop, "resync")):
            thread = threading.Thread(target=target, name=f"{self.name}-{what}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def close(self) -> None:
        self._stop.set()
        stream = self._stream
        if stream is not None:
            stream.cancel()
        for thread in self._threads:
            thread.join(timeout=5)
        self._changes.join(timeout=5)

    # -- reading ---------------------------------------------------------

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

    def names_of(self, image_id: str) -> list[str]:
        """The image records naming the image with this ID."""
        with self._lock:
            return [
                name
                for name, named in self._names.items()
                if named.result.record is not None and named.result.record.id == image_id
            ]

    def problem(self, name: str) -> str | None:
        """Why the image record ``name`` is not served ("" if it is), None if unknown."""
        with self._lock:
            named = self._names.get(name)
        return None if named is None else named.result.problem

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
        self._publish_records(
            replace(r, pinned=True) if r.id in pinned else r for r in by_id.values()
        )
        self.generation += 1

    def _reconcile_pins(self, images: Sequence[images_pb2.Image]) -> None:
        """Give images the config pins containerd's CRI pin label as well."""
        for image in images:
            if _pinned(image.labels):
                continue
            named = self._names.get(image.name)
            record = named.result.record if named is not None else None
            if record is None or not self._is_pinned((*record.repo_tags, *record.repo_digests)):
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
        self._changes.request(Changes(frozenset(names), full))

    def _resync_loop(self) -> None:
        """A full re-list every ``resync_interval``, whatever the events said."""
        while not self._stop.wait(self.options.resync_interval):
            self._request(full=True)

    def _apply(self, changes: Changes) -> None:
        """Apply the changes the events asked for (a batch of them)."""
        try:
            if changes.full:
                self.resync()
            elif changes.names:
                self.refresh(changes.names)
        except Unavailable as exc:
            log.debug("backend %s: index update postponed: %s", self.name, exc)
            # the reconnection asks for a full re-list
        except Exception:
            log.exception("backend %s: updating the index failed", self.name)


def _pinned(labels: Mapping[str, str]) -> bool:
    return labels.get(CRI_PINNED_LABEL) == CRI_PINNED


def _is_name(name: str) -> bool:
    """Whether a containerd image name is a reference name (not an ID, not junk)."""
    try:
        ref = reference.parse(name)
    except reference.ReferenceError:
        return False
    return ref.kind is RefKind.NAME
