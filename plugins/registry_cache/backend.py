"""The ``registry-cache`` backend: pull from OCI registries into a local store.

The store is an OCI image layout (:class:`crishim.oci.store.ContentStore`)
read back with :class:`crishim.oci.layout.Layout`, the index code oci-dir
uses. ``index.json`` holds one entry per image name, annotated
``io.containerd.image.name``: a pull by tag writes ``name:tag`` and
``name@<digest>``, a pull by digest ``name@<digest>``; the entry's digest is
the manifest (or index) pulled. The CRI image ID is the config digest, so
the names of one image, from any registry, merge into one record.

A pull:

1. resolves the reference on the registry's endpoints, in order (span
   ``registry.resolve``), and picks the platform's manifest from an index;
2. fetches the config and layers not already stored, several at once,
   streaming each through a hashing writer into ``.ingest/`` and renaming
   it into ``blobs/`` only when size and digest match (spans
   ``registry.fetch_blob`` and ``registry.verify``); two pulls needing one
   blob share one download;
3. under the store lock, checks every blob is still there, stores the
   manifests, and rewrites index.json atomically (span ``registry.commit``).

Removal drops every entry naming the image, then deletes the blobs no
remaining entry reaches, under the same lock; a pull whose blobs were
deleted in between finds them missing at step 3 and fetches them again.
"""

from __future__ import annotations

import concurrent.futures
import logging
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry.util.types import Attributes

from crishim.errors import (
    BackendError,
    DataLoss,
    ImageNotFound,
    NotSupported,
    Unavailable,
)
from crishim.model import FilesystemUsage, ImageRecord
from crishim.oci.atomic import fault_point
from crishim.oci.layout import (
    CONFIG_TYPES,
    CONTAINERD_NAME,
    INDEX_TYPES,
    MANIFEST_TYPES,
    MAX_JSON_BLOB,
    BrokenEntry,
    EntryKey,
    EntryResult,
    Layout,
    entry_key,
    file_identity,
)
from crishim.oci.store import BlobMismatch, ContentStore, StoreError, check_digest
from crishim.reference import Reference, RefKind
from crishim.types import BackendContext, IndexedBackend, PullProgress, PullRequest

from .client import Aborted, Deadline, Endpoint, Fetched, RegistryClient, Session, json_object
from .options import RegistryCacheOptions

log = logging.getLogger(__name__)

#: Committed blobs no index entry reaches are removed at start-up once
#: they are this old (younger ones may belong to another process's pull).
ORPHAN_GRACE_SECONDS = 3600.0
#: How often a pull re-fetches blobs a concurrent removal deleted under it.
COMMIT_ATTEMPTS = 3


@dataclass(frozen=True)
class Descriptor:
    """A checked OCI descriptor from a registry's manifest."""

    digest: str
    size: int
    media_type: str

    @classmethod
    def parse(cls, raw: object, what: str) -> Descriptor:
        if not isinstance(raw, dict):
            raise DataLoss(f"{what} is not a descriptor object")
        digest, size, media_type = raw.get("digest"), raw.get("size"), raw.get("mediaType", "")
        try:
            check_digest(digest if isinstance(digest, str) else "")
        except ValueError:
            raise DataLoss(f"{what} has an invalid digest {str(digest)[:80]!r}") from None
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise DataLoss(f"{what} {digest} has an invalid size {size!r}")
        assert isinstance(digest, str)
        return cls(digest, size, media_type if isinstance(media_type, str) else "")


@dataclass(frozen=True)
class Plan:
    """What one pull needs: resolved, checked, not yet stored."""

    endpoint: Endpoint
    #: What the reference names (an index or a manifest).
    top: Fetched
    #: Manifests and indexes to store, children first.
    documents: tuple[Fetched, ...]
    config: Descriptor
    layers: tuple[Descriptor, ...]

    def blobs(self) -> list[tuple[Descriptor, str]]:
        """(descriptor, kind) of every blob to fetch, each digest once."""
        seen: dict[str, tuple[Descriptor, str]] = {self.config.digest: (self.config, "config")}
        for layer in self.layers:
            seen.setdefault(layer.digest, (layer, "layer"))
        return list(seen.values())

    def sizes(self) -> dict[str, int]:
        return {d.digest: d.size for d, _ in self.blobs()}


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
        self.client = RegistryClient(options, context.config_dir)
        self.tracer = context.tracer_provider.get_tracer(__name__)
        self._results: tuple[EntryResult, ...] = ()
        self._index_identity: tuple[int, int, int] | None = None
        self._inflight: dict[str, concurrent.futures.Future[None]] = {}
        self._inflight_lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        #: Bumped on every published index; tests and tools wait on it.
        self.generation = 0

    # -- lifecycle -------------------------------------------------------

    def start(self) -> None:
        try:
            self.store.open()
        except StoreError as exc:
            raise BackendError(self.name, str(exc)) from exc
        try:
            self.client.start()
        except (OSError, ssl.SSLError) as exc:
            raise BackendError(self.name, f"registry TLS settings: {exc}") from exc
        with self.store.locked():
            self._refresh()
            self._sweep_orphans(ORPHAN_GRACE_SECONDS)
        log.info("backend %s: %d images in store %s", self.name, len(self.index), self.root)
        self._watcher = threading.Thread(target=self._watch, name=f"{self.name}-watch", daemon=True)
        self._watcher.start()

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        self.client.close()
        self.store.close()

    # -- the index -------------------------------------------------------

    def _refresh(self) -> None:
        """Re-read index.json (reusing known entries) and publish; store lock held."""
        identity = file_identity(self.store.index_path)
        known = {r.key: r for r in self._results}
        try:
            scan = self.layout.scan(known)
        except BrokenEntry as exc:
            raise BackendError(self.name, f"store {self.root}: {exc}") from exc
        for result in scan.results:
            if result.problem and result.key not in known:
                log.warning(
                    "backend %s: skipped entry %s (%s): %s",
                    self.name,
                    result.key[0],
                    result.key[1],
                    result.problem,
                )
        self._results = scan.results
        self._index_identity = identity
        self.publish(r.record for r in scan.results if r.record is not None)
        self.generation += 1

    def _watch(self) -> None:
        """Pick up index.json changes made by another process (``crishim pull``)."""
        while not self._stop.wait(self.options.rescan_interval):
            if file_identity(self.store.index_path) == self._index_identity:
                continue
            try:
                with self.store.locked():
                    if file_identity(self.store.index_path) != self._index_identity:
                        self._refresh()
                self.store.remeasure()
            except Exception:
                log.exception("backend %s: re-reading the store failed", self.name)

    def _refresh_if_changed(self) -> None:
        if file_identity(self.store.index_path) != self._index_identity:
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
            doomed = [r for r in self._results if r.record is not None and r.record.id == record.id]
            if not doomed:
                return
            keys: set[EntryKey] = {r.key for r in doomed}
            self.store.update_index(
                lambda entries: [e for e in entries if entry_key(e) not in keys]
            )
            self._refresh()
            live: set[str] = set()
            for result in self._results:
                live.update(result.closure)
            candidates = {d for r in doomed for d in r.closure} - live
            deleted = self.store.delete(candidates)
        log.info(
            "backend %s: removed %s (%d names, %d blobs)", self.name, record.id, len(keys), deleted
        )

    def _sweep_orphans(self, grace: float) -> int:
        """Delete committed blobs no entry reaches, older than ``grace``; lock held."""
        live: set[str] = set()
        for result in self._results:
            live.update(result.closure)
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
        ref = request.ref
        if ref.kind is not RefKind.NAME:
            known = self.get_image(ref)
            if known is not None:
                return known
            raise ImageNotFound(
                f"cannot pull {ref.raw}: an image ID names no registry; pull the image by name"
            )
        deadline = Deadline(request.deadline, request.cancelled, f"pull {ref}")
        attributes = {
            "crishim.backend": self.name,
            "crishim.registry": ref.domain,
            "crishim.image.reference": str(ref),
        }
        with self.tracer.start_as_current_span("registry.pull", attributes=attributes):
            if ref.digest:
                known = self.get_image(ref)
                if known is not None:
                    return known
            deadline.check()
            try:
                return self._pull(ref, request, deadline)
            except (OSError, StoreError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                raise BackendError(self.name, f"pull {ref}: store {self.root}: {reason}") from exc

    def _pull(self, ref: Reference, request: PullRequest, deadline: Deadline) -> ImageRecord:
        session = self.client.session(ref, request.auth, deadline)
        plan = self._resolve(session, ref)
        for _ in range(COMMIT_ATTEMPTS):
            self._fetch_all(session, plan, request.progress)
            record = self._commit(ref, plan, deadline)
            if record is not None:
                return record
            log.info("backend %s: %s: blobs were removed meanwhile; fetching again", self.name, ref)
        raise Unavailable(
            f"pull {ref}: blobs kept being removed by concurrent RemoveImage calls; try again"
        )

    def _resolve(self, session: Session, ref: Reference) -> Plan:
        with self.tracer.start_as_current_span(
            "registry.resolve",
            attributes={"crishim.registry": ref.domain, "crishim.image.reference": str(ref)},
        ) as span:
            top = session.resolve(ref.digest or ref.tag, ref.digest or None)
            span.set_attribute("oci.digest", top.digest)
            span.set_attribute("oci.media_type", top.media_type)
            span.set_attribute("crishim.registry.endpoint", top.endpoint.base)
            documents = [top]
            current = top
            for depth in range(3):
                body = json_object(
                    current.data, f"pull {ref}: {current.media_type} {current.digest}"
                )
                if current.media_type in MANIFEST_TYPES:
                    break
                if current.media_type not in INDEX_TYPES or depth == 2:
                    raise NotSupported(
                        f"pull {ref}: {current.digest} has media type "
                        f"{current.media_type or '(none)'!r}, not an image manifest or index"
                    )
                chosen = self._pick_platform(body, ref)
                current = session.fetch_manifest(current.endpoint, chosen.digest, chosen.digest)
                if chosen.media_type and current.media_type != chosen.media_type:
                    current = Fetched(
                        current.digest, chosen.media_type, current.data, current.endpoint
                    )
                documents.append(current)
            manifest = json_object(current.data, f"pull {ref}: manifest {current.digest}")
        with self.tracer.start_as_current_span(
            "registry.verify", attributes={"oci.digest": current.digest, "oci.kind": "manifest"}
        ):
            what = f"pull {ref}: manifest {current.digest}"
            config = Descriptor.parse(manifest.get("config"), f"{what}: config")
            if config.media_type not in CONFIG_TYPES:
                raise NotSupported(
                    f"{what}: config media type {config.media_type!r} is not a container image "
                    "config (not a container image?)"
                )
            if config.size > MAX_JSON_BLOB:
                raise DataLoss(f"{what}: config of {config.size} bytes is over the limit")
            raw_layers = manifest.get("layers")
            if not isinstance(raw_layers, list):
                raise DataLoss(f"{what}: no layers list")
            layers = tuple(
                Descriptor.parse(layer, f"{what}: layer {i}") for i, layer in enumerate(raw_layers)
            )
        return Plan(
            endpoint=top.endpoint,
            top=top,
            documents=tuple(reversed(documents)),
            config=config,
            layers=layers,
        )

    def _pick_platform(self, index: Mapping[str, Any], ref: Reference) -> Descriptor:
        manifests = index.get("manifests")
        if not isinstance(manifests, list):
            raise DataLoss(f"pull {ref}: the image index has no manifests list")
        platform = self.context.platform
        fallback: Descriptor | None = None
        for i, candidate in enumerate(manifests):
            if not isinstance(candidate, dict):
                continue
            plat = candidate.get("platform")
            if not isinstance(plat, dict):
                continue
            os_name, arch = plat.get("os", ""), plat.get("architecture", "")
            variant = plat.get("variant", "") or ""
            if not all(isinstance(x, str) for x in (os_name, arch, variant)):
                continue
            if not platform.matches(os_name, arch, variant):
                continue
            descriptor = Descriptor.parse(candidate, f"pull {ref}: index entry {i}")
            if variant == platform.variant:
                return descriptor
            if fallback is None:
                fallback = descriptor
        if fallback is None:
            raise ImageNotFound(f"pull {ref}: the image has no manifest for platform {platform}")
        return fallback

    # -- fetching --------------------------------------------------------

    def _fetch_all(
        self, session: Session, plan: Plan, progress: Callable[[PullProgress], None] | None
    ) -> None:
        blobs = plan.blobs()
        deadline = session.deadline
        parent = otel_context.get_current()
        workers = min(self.options.max_concurrent_downloads, len(blobs))

        def one(descriptor: Descriptor, kind: str) -> None:
            token = otel_context.attach(parent)
            try:
                self._ensure_blob(session, plan.endpoint, descriptor, kind, progress)
            finally:
                otel_context.detach(token)

        if workers <= 1:
            for descriptor, kind in blobs:
                one(descriptor, kind)
            return
        with concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix=f"{self.name}-fetch"
        ) as pool:
            futures = [pool.submit(one, d, k) for d, k in blobs]
            failure: BaseException | None = None
            for future in concurrent.futures.as_completed(futures):
                exc = future.exception()
                if exc is not None and not isinstance(exc, Aborted) and failure is None:
                    failure = exc
                    deadline.abort()
            if failure is not None:
                raise failure

    def _ensure_blob(
        self,
        session: Session,
        endpoint: Endpoint,
        descriptor: Descriptor,
        kind: str,
        progress: Callable[[PullProgress], None] | None,
    ) -> None:
        """Make the blob present: reuse it, wait for another pull's download, or fetch it."""
        digest, size = descriptor.digest, descriptor.size
        deadline = session.deadline

        def report(state: str, done: int) -> None:
            if progress is not None:
                progress(PullProgress(digest, kind, size, done, state))

        while True:
            deadline.check()
            if self.store.has(digest, size):
                report("exists", size)
                return
            with self._inflight_lock:
                future = self._inflight.get(digest)
                owner = future is None
                if future is None:
                    future = concurrent.futures.Future()
                    self._inflight[digest] = future
            if not owner:
                report("waiting", 0)
                while not future.done():
                    deadline.check()
                    concurrent.futures.wait([future], timeout=deadline.bound(0.5))
                # done, either way: loop to find the blob stored (or fetch it ourselves)
                continue
            try:
                self._download(session, endpoint, descriptor, kind, report)
            except BaseException as exc:
                future.set_exception(exc)
                raise
            else:
                future.set_result(None)
            finally:
                with self._inflight_lock:
                    self._inflight.pop(digest, None)
            return

    def _download(
        self,
        session: Session,
        endpoint: Endpoint,
        descriptor: Descriptor,
        kind: str,
        report: Callable[[str, int], None],
    ) -> None:
        digest, size = descriptor.digest, descriptor.size
        what = f"{session.deadline.what}: {kind} {digest}"
        attributes: Attributes = {
            "oci.digest": digest,
            "oci.size": size,
            "oci.media_type": descriptor.media_type,
            "oci.kind": kind,
            "crishim.registry.endpoint": endpoint.base,
        }
        with (
            self.tracer.start_as_current_span("registry.fetch_blob", attributes=attributes),
            self.store.writer(digest, size) as writer,
        ):
            done = 0
            report("downloading", 0)

            def on_bytes(n: int) -> None:
                nonlocal done
                done += n
                report("downloading", done)

            try:
                session.download(endpoint, digest, writer, on_bytes)
                with self.tracer.start_as_current_span(
                    "registry.verify", attributes={"oci.digest": digest, "oci.size": size}
                ):
                    writer.commit()
            except BlobMismatch as exc:
                raise DataLoss(f"{what} from {session.host} at {endpoint.base}: {exc}") from None
        report("done", size)

    # -- committing ------------------------------------------------------

    def _commit(self, ref: Reference, plan: Plan, deadline: Deadline) -> ImageRecord | None:
        """Store the manifests and name the image; None when blobs went missing."""
        deadline.check()
        repository = ref.repository
        if ref.digest:
            names = [f"{repository}@{ref.digest}"]
        else:
            names = [f"{repository}:{ref.tag}", f"{repository}@{plan.top.digest}"]
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
                    (r.problem for r in self._results if r.key[1] == names[0] and r.problem),
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
