"""The puller every pulling backend shares: resolve, pick the platform, fetch, verify.

A pull reads from an :class:`~crishim.registry.plan.ImageSource` and writes
blobs into a :class:`~crishim.registry.plan.BlobSink` (see
:mod:`crishim.registry.plan`); the backend then *commits* what the
:class:`~crishim.registry.plan.Plan` says (stores the manifests, names the
image) in its own way.

1. :meth:`Puller.plan` resolves the reference (span ``registry.resolve``),
   picks the platform's manifest from an index (nested at most twice), and
   checks the manifest: a container image config, a layers list, every
   descriptor well-formed (span ``registry.verify``).
2. :meth:`Puller.fetch` makes every blob of the plan present in the sink,
   several at once: a blob the sink has is reused; a blob another pull of the
   same backend is downloading is waited for, not fetched twice; the rest
   stream through the sink's writer, which counts and hashes while writing and
   only makes a blob visible once its size and digest match (spans
   ``registry.fetch_blob`` and ``registry.verify``). A mismatch is DATA_LOSS.

Between the two, a backend calls :func:`~crishim.registry.request.admit`:
the pull's image policies (``PullRequest.admit``) judge what the plan
resolved before any layer is fetched (:mod:`crishim.registry.request`
holds that and the prologue every pulling backend runs).

Errors are :mod:`crishim.errors` exceptions naming the pull and the source.
The names backends import from here (``Plan``, ``BlobSink``,
``pull_request``...) stay importable from here.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.util.types import Attributes

from crishim.errors import DataLoss, ImageNotFound, NotSupported
from crishim.model import Platform
from crishim.oci.spec import (
    CONFIG_TYPES,
    INDEX_TYPES,
    MANIFEST_TYPES,
    MAX_JSON_BLOB,
    Descriptor,
    artifact_type,
    choose_platform,
)
from crishim.oci.store import BlobMismatch
from crishim.reference import Reference
from crishim.types import PullProgress, PullRequest

from .deadline import Aborted
from .plan import BlobSink, BlobWriter, ImageSource, Plan, Progress, parse_descriptor
from .request import admit, check_names, pull_request
from .session import Fetched, json_object

__all__ = [
    "MAX_INDEX_DEPTH",
    "BlobSink",
    "BlobWriter",
    "Descriptor",
    "ImageSource",
    "Plan",
    "Progress",
    "Puller",
    "admit",
    "check_names",
    "pull_request",
]

#: Image indexes may nest this deep (an index of indexes of manifests).
MAX_INDEX_DEPTH = 2


class Puller:
    """Resolves and fetches images for one backend; shares downloads between its pulls."""

    def __init__(
        self,
        name: str,
        platform: Platform,
        tracer: trace.Tracer,
        *,
        max_concurrent_downloads: int = 3,
        artifacts: bool = False,
    ) -> None:
        self.name = name
        self.platform = platform
        self.tracer = tracer
        self.max_concurrent_downloads = max_concurrent_downloads
        #: Pull OCI artifacts (image volumes) too; False refuses them.
        self.artifacts = artifacts
        self._inflight: dict[str, concurrent.futures.Future[None]] = {}
        self._inflight_lock = threading.Lock()

    # -- resolving -------------------------------------------------------

    def prepare(
        self, source: ImageSource, ref: Reference, request: PullRequest | None = None
    ) -> Plan:
        """:meth:`plan`, then what a backend checks before fetching: a digest name
        that is not the image's own is refused (:func:`check_names`), and the
        pull's image policies judge the plan (:func:`admit`)."""
        plan = self.plan(source, ref)
        check_names(ref, plan)
        admit(request, ref, plan, source)
        return plan

    def plan(self, source: ImageSource, ref: Reference) -> Plan:
        """Resolve ``ref`` on ``source`` to the platform's manifest and check it."""
        with self.tracer.start_as_current_span(
            "registry.resolve",
            attributes={"crishim.registry": ref.domain, "crishim.image.reference": str(ref)},
        ) as span:
            top = source.resolve(ref.digest or ref.tag, ref.digest or None)
            span.set_attribute("oci.digest", top.digest)
            span.set_attribute("oci.media_type", top.media_type)
            span.set_attribute("crishim.registry.endpoint", source.origin)
            documents = [top]
            current = top
            for depth in range(MAX_INDEX_DEPTH + 1):
                body = json_object(
                    current.data, f"pull {ref}: {current.media_type} {current.digest}"
                )
                if current.media_type in MANIFEST_TYPES:
                    break
                if current.media_type not in INDEX_TYPES or depth == MAX_INDEX_DEPTH:
                    raise NotSupported(
                        f"pull {ref}: {current.digest} has media type "
                        f"{current.media_type or '(none)'!r}, not an image manifest or index"
                    )
                chosen = self.pick_platform(body, ref)
                current = source.manifest(chosen.digest)
                if chosen.media_type and current.media_type != chosen.media_type:
                    current = Fetched(
                        current.digest, chosen.media_type, current.data, current.origin
                    )
                documents.append(current)
            manifest = json_object(current.data, f"pull {ref}: manifest {current.digest}")
        with self.tracer.start_as_current_span(
            "registry.verify", attributes={"oci.digest": current.digest, "oci.kind": "manifest"}
        ):
            what = f"pull {ref}: manifest {current.digest}"
            config = parse_descriptor(manifest.get("config"), f"{what}: config")
            kind = artifact_type(current.media_type, manifest)
            if kind and not self.artifacts:
                raise NotSupported(
                    f"{what} is an OCI artifact ({kind[:100]}), not a container image; "
                    f"backend {self.name} pulls container images only (options.artifacts: false)"
                )
            if config.media_type not in CONFIG_TYPES and not kind:
                raise NotSupported(
                    f"{what}: config media type {config.media_type!r} is not a container image "
                    "config (not a container image?)"
                )
            if config.size > MAX_JSON_BLOB and not kind:
                raise DataLoss(f"{what}: config of {config.size} bytes is over the limit")
            raw_layers = manifest.get("layers")
            if not isinstance(raw_layers, list):
                raise DataLoss(f"{what}: no layers list")
            layers = tuple(
                parse_descriptor(layer, f"{what}: layer {i}") for i, layer in enumerate(raw_layers)
            )
        return Plan(
            top=top,
            documents=tuple(reversed(documents)),
            config=config,
            layers=layers,
            artifact_type=kind,
        )

    def pick_platform(self, index: Mapping[str, Any], ref: Reference) -> Descriptor:
        """The index entry for this backend's platform (an exact variant first)."""
        manifests = index.get("manifests")
        if not isinstance(manifests, list):
            raise DataLoss(f"pull {ref}: the image index has no manifests list")
        chosen = choose_platform(manifests, self.platform)
        if chosen is None:
            raise ImageNotFound(
                f"pull {ref}: the image has no manifest for platform {self.platform}"
            )
        return parse_descriptor(manifests[chosen], f"pull {ref}: index entry {chosen}")

    # -- fetching --------------------------------------------------------

    def fetch(
        self, source: ImageSource, plan: Plan, sink: BlobSink, progress: Progress | None = None
    ) -> None:
        """Make every blob of ``plan`` present in ``sink``, several downloads at once."""
        blobs = plan.blobs()
        deadline = source.deadline
        if progress is not None:
            # every blob of the plan, before any starts: displays know the whole
            for descriptor, kind in blobs:
                progress(PullProgress(descriptor.digest, kind, descriptor.size, 0, "pending"))
        parent = otel_context.get_current()
        workers = min(self.max_concurrent_downloads, len(blobs))

        def one(descriptor: Descriptor, kind: str) -> None:
            token = otel_context.attach(parent)
            try:
                self._ensure_blob(source, sink, descriptor, kind, progress)
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
        source: ImageSource,
        sink: BlobSink,
        descriptor: Descriptor,
        kind: str,
        progress: Progress | None,
    ) -> None:
        """Make the blob present: reuse it, wait for another pull's download, or fetch it."""
        digest, size = descriptor.digest, descriptor.size
        deadline = source.deadline

        def report(state: str, done: int) -> None:
            if progress is not None:
                progress(PullProgress(digest, kind, size, done, state))

        while True:
            deadline.check()
            if sink.has(digest, size):
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
                self._download(source, sink, descriptor, kind, report)
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
        source: ImageSource,
        sink: BlobSink,
        descriptor: Descriptor,
        kind: str,
        report: Callable[[str, int], None],
    ) -> None:
        digest, size = descriptor.digest, descriptor.size
        attributes: Attributes = {
            "oci.digest": digest,
            "oci.size": size,
            "oci.media_type": descriptor.media_type,
            "oci.kind": kind,
            "crishim.registry.endpoint": source.origin,
        }
        with (
            self.tracer.start_as_current_span("registry.fetch_blob", attributes=attributes),
            sink.writer(digest, size) as writer,
        ):
            done = 0
            report("downloading", 0)

            def on_bytes(n: int) -> None:
                nonlocal done
                done += n
                report("downloading", done)

            try:
                source.blob(digest, writer, on_bytes)
                with self.tracer.start_as_current_span(
                    "registry.verify", attributes={"oci.digest": digest, "oci.size": size}
                ):
                    writer.commit()
            except BlobMismatch as exc:
                raise DataLoss(f"{source.where()}: {kind} {digest}: {exc}") from None
        report("done", size)
