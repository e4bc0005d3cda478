"""The puller every pulling backend shares: resolve, pick the platform, fetch, verify.

A pull reads from an :class:`ImageSource` (a registry :class:`~crishim.registry.client.Session`,
or a local layout or archive for ``crishim import``) and writes blobs into a
:class:`BlobSink`, the only part that differs between backends: an OCI-layout
content store, containerd's content store, a third party's own. The backend
then *commits* what the :class:`Plan` says (stores the manifests, names the
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

Between the two, a backend calls :func:`admit`: the pull's image policies
(``PullRequest.admit``) judge what the plan resolved before any layer is
fetched.

Errors are :mod:`crishim.errors` exceptions naming the pull and the source.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.util.types import Attributes

from crishim.errors import DataLoss, ImageNotFound, InvalidRequest, NotSupported
from crishim.model import ImageRecord, Platform
from crishim.oci.spec import (
    CONFIG_TYPES,
    INDEX_TYPES,
    MANIFEST_TYPES,
    MAX_JSON_BLOB,
    artifact_type,
    check_digest,
    digest_of,
)
from crishim.oci.store import BlobMismatch
from crishim.reference import Reference, RefKind
from crishim.types import PullProgress, PullRequest, ResolvedImage

from .client import Aborted, ByteSink, Deadline, Fetched, RegistryClient, json_object

#: Image indexes may nest this deep (an index of indexes of manifests).
MAX_INDEX_DEPTH = 2


@dataclass(frozen=True)
class Descriptor:
    """A checked OCI descriptor from a manifest."""

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
    """What one pull needs: resolved and checked, not yet stored."""

    #: What the reference names (an index or a manifest).
    top: Fetched
    #: Manifests and indexes to store, children first: ``documents[0]`` is
    #: the platform's manifest, the last is ``top``.
    documents: tuple[Fetched, ...]
    config: Descriptor
    layers: tuple[Descriptor, ...]
    #: Set when the manifest holds an OCI artifact (see
    #: :func:`crishim.oci.spec.artifact_type`): its type. Its ID is then
    #: the manifest's digest, not the config's.
    artifact_type: str = ""

    @property
    def image_id(self) -> str:
        """The CRI image ID: the config digest (an artifact's: its manifest digest)."""
        return self.manifest.digest if self.artifact_type else self.config.digest

    @property
    def manifest(self) -> Fetched:
        return self.documents[0]

    def blobs(self) -> list[tuple[Descriptor, str]]:
        """(descriptor, kind) of every blob to fetch, each digest once."""
        seen: dict[str, tuple[Descriptor, str]] = {self.config.digest: (self.config, "config")}
        for layer in self.layers:
            seen.setdefault(layer.digest, (layer, "layer"))
        return list(seen.values())

    def sizes(self) -> dict[str, int]:
        return {d.digest: d.size for d, _ in self.blobs()}

    def children(self, document: Fetched) -> tuple[str, ...]:
        """The digests ``document`` refers to that this pull stores, in order."""
        if document is self.documents[0]:
            return (self.config.digest, *(layer.digest for layer in self.layers))
        i = self.documents.index(document)
        return (self.documents[i - 1].digest,)

    @property
    def size(self) -> int:
        """The image's size as the CRI reports it: manifest, config and layers."""
        return len(self.manifest.data) + sum(d.size for d, _ in self.blobs())


class ImageSource(Protocol):
    """Where a pull reads an image from."""

    #: The caller's deadline and cancellation, checked between chunks.
    deadline: Deadline

    @property
    def origin(self) -> str:
        """Where content comes from, for spans (an endpoint URL, a path)."""
        ...

    def where(self) -> str:
        """The pull and the source, to start error messages with."""
        ...

    def resolve(self, reference: str, expected: str | None) -> Fetched:
        """The manifest or index a tag or digest names."""
        ...

    def manifest(self, digest: str) -> Fetched:
        """A manifest the resolved document refers to, checked against ``digest``."""
        ...

    def blob(
        self, digest: str, writer: ByteSink, on_bytes: Callable[[int], None] | None = None
    ) -> None:
        """Stream a blob's bytes into ``writer``."""
        ...


class BlobWriter(Protocol):
    """One blob being written into a sink.

    ``commit`` checks the size and the digest of what was written (raising
    :class:`crishim.oci.store.BlobMismatch`) and only then makes the blob
    visible; leaving the context without ``commit`` discards what was written.
    """

    def write(self, data: bytes) -> None: ...

    def commit(self) -> object: ...

    def __enter__(self) -> BlobWriter: ...

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> object: ...


class BlobSink(Protocol):
    """Where a backend keeps blobs: the one thing pulling backends do differently."""

    def has(self, digest: str, size: int) -> bool:
        """Whether the blob is stored with that size, and stays until the pull commits.

        A sink whose store collects unreferenced blobs (containerd) protects
        the blob for the pull here (adds it to the pull's lease).
        """
        ...

    def writer(self, digest: str, size: int) -> BlobWriter:
        """A verifying writer for one blob (see :class:`BlobWriter`)."""
        ...


Progress = Callable[[PullProgress], None]


class _Lookup(Protocol):
    def get_image(self, ref: Reference) -> ImageRecord | None: ...


def pull_request(
    backend: _Lookup,
    name: str,
    tracer: trace.Tracer,
    request: PullRequest,
    fetch: Callable[[Reference, Deadline], ImageRecord],
    registry: RegistryClient | None = None,
) -> ImageRecord:
    """What every pulling backend does with a PullImage before fetching.

    An image ID names no registry: it is answered when held, else
    NOT_FOUND. A pull by digest of an image held fetches nothing (the
    digest pins the content) but, unless the registry's
    ``verify_held_images`` is off, first proves with the request's
    credentials that the registry grants the image (``registry``'s manifest
    HEAD), failing as a fresh pull would: a pod without credentials cannot
    use what another pod pulled (with image policies configured the pull
    is resolved again instead, fetching nothing, so that they judge it).
    Otherwise ``fetch(ref, deadline)`` runs in
    the ``registry.pull`` span, with the request's deadline and
    cancellation.
    """
    ref = request.ref
    if ref.kind is not RefKind.NAME:
        known = backend.get_image(ref)
        if known is not None:
            return known
        raise ImageNotFound(
            f"cannot pull {ref.raw}: an image ID names no registry; pull the image by name"
        )
    deadline = Deadline(request.deadline, request.cancelled, f"pull {ref}")
    attributes = {
        "crishim.backend": name,
        "crishim.registry": ref.domain,
        "crishim.image.reference": str(ref),
    }
    with tracer.start_as_current_span("registry.pull", attributes=attributes) as span:
        # with image policies, a held image is resolved again (nothing is
        # downloaded) so that they judge it like any other pull
        if ref.digest and request.admit is None:
            known = backend.get_image(ref)
            if known is not None:
                if registry is not None and registry.verifies_held_images(ref.domain):
                    span.add_event("verify held image")
                    session = registry.session(ref, request.auth, deadline)
                    session.check_access(ref.digest)
                return known
        deadline.check()
        return fetch(ref, deadline)


def admit(request: PullRequest | None, ref: Reference, plan: Plan, source: ImageSource) -> None:
    """Let the pull's image policies judge the plan (``request.admit``), if any.

    Called after :meth:`Puller.plan`, before :meth:`Puller.fetch`: a denied
    pull fetches no layer and makes nothing visible. Policies read the
    config through ``source`` only if they ask for it.
    """
    if request is None or request.admit is None:
        return
    manifest = json_object(plan.manifest.data, f"pull {ref}: manifest {plan.manifest.digest}")
    config = plan.config

    def read_config() -> Mapping[str, Any]:
        if config.size > MAX_JSON_BLOB:
            raise DataLoss(f"pull {ref}: config of {config.size} bytes is over the limit")
        buffer = _Buffer(config.size)
        source.blob(config.digest, buffer)
        data = bytes(buffer.data)
        if digest_of(data, check_digest(config.digest)[0]) != config.digest:
            raise DataLoss(f"pull {ref}: config {config.digest} does not match its digest")
        return json_object(data, f"pull {ref}: config {config.digest}")

    request.admit(
        ResolvedImage(
            ref=ref,
            digest=plan.top.digest,
            media_type=plan.top.media_type,
            manifest_digest=plan.manifest.digest,
            manifest=manifest,
            image_id=plan.image_id,
            artifact_type=plan.artifact_type,
            source=source,
            read_config=read_config,
        )
    )


class _Buffer:
    """An in-memory ByteSink for a small blob, refusing more than its size."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        if len(self.data) + len(data) > self.size:
            raise DataLoss(f"the blob is longer than its {self.size} bytes")
        self.data += data


def check_names(ref: Reference, plan: Plan) -> None:
    """Refuse a digest name that is not the digest of what was resolved (imports)."""
    if ref.digest and ref.digest != plan.top.digest:
        raise InvalidRequest(
            f"{ref} names {ref.digest}, but the image is {plan.top.digest}: "
            "name it by tag, or by its own digest"
        )


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
            config = Descriptor.parse(manifest.get("config"), f"{what}: config")
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
                Descriptor.parse(layer, f"{what}: layer {i}") for i, layer in enumerate(raw_layers)
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
        platform = self.platform
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
