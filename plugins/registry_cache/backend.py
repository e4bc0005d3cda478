"""The ``registry-cache`` backend: pull from OCI registries into a local store.

The store is an OCI image layout (:class:`crishim.oci.store.ContentStore`)
read back with :class:`crishim.oci.layout.Layout`, the index code oci-dir
uses. ``index.json`` holds one entry per image name, annotated
``io.containerd.image.name``: a pull by tag writes ``name:tag`` and
``name@<digest>``, a pull by digest ``name@<digest>``; the entry's digest is
the manifest (or index) pulled. The CRI image ID is the config digest, so
the names of one image, from any registry, merge into one record.

A pull goes through the shared :class:`crishim.registry.puller.Puller`
with the store as its sink:

1. it resolves the reference on the registry's endpoints, in order, and
   picks the platform's manifest from an index;
2. it fetches the config and layers not already stored, several at once,
   each streamed through the store's hashing writer into ``.ingest/`` and
   renamed into ``blobs/`` only when size and digest match; two pulls
   needing one blob share one download;
3. the backend then, under the store lock, checks every blob is still there, stores the
   manifests, and rewrites index.json atomically (span ``registry.commit``).

Removal drops every entry naming the image, then deletes the blobs no
remaining entry reaches, under the same lock; a pull whose blobs were
deleted in between finds them missing at step 3 and fetches them again.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from crishim.errors import BackendError
from crishim.model import FilesystemUsage, ImageRecord
from crishim.oci.atomic import fault_point
from crishim.oci.indexing import LayoutIndex, rewrite_making_room
from crishim.oci.layout import CONTAINERD_NAME, BrokenEntry, Layout, entry_key
from crishim.oci.store import ContentStore, StoreError
from crishim.reference import Reference
from crishim.registry.deadline import Deadline
from crishim.registry.plan import ImageSource, Plan, Progress
from crishim.registry.pulling import Pulling
from crishim.types import BackendContext, ImportRequest, IndexedBackend, PullRequest

from .options import RegistryCacheOptions

log = logging.getLogger(__name__)

#: Committed blobs no index entry reaches are removed at start-up once
#: they are this old (younger ones may belong to another process's pull).
ORPHAN_GRACE_SECONDS = 3600.0


class RegistryCacheBackend(IndexedBackend):
    """Pulls images from registries into a local OCI-layout store and serves them."""

    def __init__(self, context: BackendContext, options: RegistryCacheOptions) -> None:
        super().__init__(context)
        self.options = options
        if options.path is not None:
            root = context.resolve_path(options.path)
        elif context.state_dir is not None:
            root = context.state_dir / "store"
        else:
            raise BackendError(context.name, "no store path: set options.path or state_dir")
        self.root = root
        self.store = ContentStore(root)
        self.layout = Layout(root, context.platform)
        # the store serves what the puller may put there: artifacts too, unless refused
        self.layout.resolver.artifacts = options.artifacts
        self.tracer = context.tracer_provider.get_tracer(__name__)
        #: The registry client and the puller, with the steps around a commit.
        self.pulling = Pulling(context, options, self.tracer)
        self.entries = LayoutIndex(self.name, self.layout, self.publish)
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def generation(self) -> int:
        """Bumped on every published index; tests and tools wait on it."""
        return self.entries.generation

    # -- lifecycle -------------------------------------------------------

    def start(self) -> None:
        try:
            self.store.open()
        except StoreError as exc:
            raise BackendError(self.name, str(exc)) from exc
        self.pulling.start()
        with self.store.locked():
            self._refresh()
            self._sweep_orphans(ORPHAN_GRACE_SECONDS)
        log.info("backend %s: %d images in store %s", self.name, len(self.index), self.root)
        # index.json changes made by another process (``crishim pull``)
        self._watcher = self.entries.follow(
            self._reread, self._stop, self.options.rescan_interval, notify=False
        )

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        self.pulling.close()
        self.store.close()

    # -- the index -------------------------------------------------------

    def _refresh(self) -> None:
        """Re-read index.json (reusing known entries) and publish; store lock held."""
        try:
            self.entries.rescan()
        except BrokenEntry as exc:
            raise BackendError(self.name, f"store {self.root}: {exc}") from exc

    def _reread(self) -> None:
        """What the watcher runs when index.json changed."""
        with self.store.locked():
            self._refresh_if_changed()
        self.store.remeasure()

    def _refresh_if_changed(self) -> None:
        if self.entries.changed():
            self._refresh()

    # -- calls -----------------------------------------------------------

    def filesystem_usage(self) -> Sequence[FilesystemUsage]:
        return (self.store.usage(),)

    def remove_image(self, record: ImageRecord) -> None:
        try:
            self._remove(record)
        except (OSError, StoreError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise BackendError(
                self.name, f"remove {record.id}: store {self.root}: {reason}"
            ) from exc

    def _remove(self, record: ImageRecord) -> None:
        with self.store.locked():
            self._refresh_if_changed()
            removal = self.entries.removal(record.id)
            if removal is None:
                return
            # the store holds only what was pulled: an entry that cannot be read
            # whole (an index's other platforms) reaches no blob it lacks
            candidates = removal.garbage()

            def drop(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
                return [e for e in entries if entry_key(e) not in removal.keys]

            freed = rewrite_making_room(
                self.name,
                record.id,
                lambda: self.store.update_index(drop),
                lambda: self.store.delete(candidates),
            )
            self._refresh()
            deleted = freed + self.store.delete(candidates)
        log.info(
            "backend %s: removed %s (%d names, %d blobs)",
            self.name,
            record.id,
            len(removal.keys),
            deleted,
        )

    def _sweep_orphans(self, grace: float) -> int:
        """Delete committed blobs no entry reaches, older than ``grace``; lock held."""
        live = self.entries.live_blobs()
        cutoff = time.time() - grace
        doomed = []
        for digest in self.store.blob_digests():
            if digest in live:
                continue
            try:
                if self.store.blob_path(digest).stat().st_mtime < cutoff:
                    doomed.append(digest)
            except FileNotFoundError:
                continue
        return self.store.delete(doomed) if doomed else 0

    # -- pulling ---------------------------------------------------------

    def pull_image(self, request: PullRequest) -> ImageRecord:
        def store(session: ImageSource, ref: Reference) -> ImageRecord:
            with self._store_errors(f"pull {ref}"):
                return self._store(session, ref, request.progress, request)

        return self.pulling.pull(self, request, store)

    def import_image(self, request: ImportRequest) -> ImageRecord:
        def store(source: ImageSource, ref: Reference) -> ImageRecord:
            with self._store_errors(f"import {ref}"):
                return self._store(source, ref, request.progress)

        return self.pulling.import_image(request, store)

    @contextlib.contextmanager
    def _store_errors(self, what: str) -> Iterator[None]:
        """The store failing under ``what`` is this backend's error, naming the store."""
        try:
            yield
        except (OSError, StoreError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise BackendError(self.name, f"{what}: store {self.root}: {reason}") from exc

    def _store(
        self,
        source: ImageSource,
        ref: Reference,
        progress: Progress | None,
        request: PullRequest | None = None,
    ) -> ImageRecord:
        """Fetch what ``source`` holds for ``ref`` into the store and name it
        (``request``: the pull's, whose image policies judge the plan first)."""
        puller = self.pulling.puller
        plan = puller.prepare(source, ref, request)

        def attempt() -> ImageRecord | None:
            puller.fetch(source, plan, self.store, progress)
            return self._commit(ref, plan, source.deadline)

        return self.pulling.until_committed(
            attempt,
            ref,
            lost="removed",
            gave_up=f"pull {ref}: blobs kept being removed by concurrent RemoveImage calls; "
            "try again",
        )

    # -- committing ------------------------------------------------------

    def _commit(self, ref: Reference, plan: Plan, deadline: Deadline) -> ImageRecord | None:
        """Store the manifests and name the image; None when blobs went missing."""
        deadline.check()
        names = plan.names(ref)
        entries = [
            {
                "mediaType": plan.top.media_type,
                "digest": plan.top.digest,
                "size": len(plan.top.data),
                "annotations": {CONTAINERD_NAME: name},
            }
            for name in names
        ]
        with (
            self.tracer.start_as_current_span(
                "registry.commit",
                attributes={"oci.digest": plan.top.digest, "crishim.image.names": names},
            ),
            self.store.locked(),
        ):
            if self.store.missing(plan.sizes()):
                return None
            for document in plan.documents:
                self.store.put(document.digest, document.data)
            fault_point("registry:before-index")
            taken = set(names)

            def change(current: list[dict[str, Any]]) -> list[dict[str, Any]]:
                kept = [e for e in current if _entry_name(e) not in taken]
                return kept + entries

            self.store.update_index(change)
            self._refresh()
            record = self.index.get(ref)
            if record is None:
                problem = next(
                    (r.problem for r in self.entries.results if r.key[1] == names[0] and r.problem),
                    "the new entry cannot be read back",
                )
                raise BackendError(self.name, f"pull {ref}: stored, but {problem}")
        log.info("backend %s: pulled %s as %s", self.name, ref, record.id)
        return record


def _entry_name(entry: Mapping[str, Any]) -> str:
    annotations = entry.get("annotations")
    if isinstance(annotations, dict):
        value = annotations.get(CONTAINERD_NAME)
        if isinstance(value, str):
            return value
    return ""
