"""What every pulling backend does around the puller with a PullImage or an import.

:func:`pull_request` is the prologue (image IDs, held digests, the
``registry.pull`` span), :func:`admit` lets the pull's image policies judge
the plan before any layer is fetched, :func:`check_names` refuses an
import named by a digest that is not its own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from opentelemetry import trace

from crishim.errors import DataLoss, ImageNotFound, InvalidRequest
from crishim.model import ImageRecord
from crishim.oci.spec import MAX_JSON_BLOB, check_digest, digest_of
from crishim.reference import Reference, RefKind
from crishim.types import PullRequest, ResolvedImage

from .client import RegistryClient
from .deadline import Deadline
from .plan import ImageSource, Plan
from .session import json_object


class Lookup(Protocol):
    """A backend as the prologue asks it: does it hold the image?"""

    def get_image(self, ref: Reference) -> ImageRecord | None: ...


def pull_request(
    backend: Lookup,
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
