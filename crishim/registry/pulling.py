"""What a pulling backend is made of, but for its blob sink and its commit.

The built-in ``registry-cache`` and ``containerd`` backends differ only in
where blobs go and how the image is named; :class:`Pulling` is the rest,
built from the backend's :class:`~crishim.registry.options.PullOptions`:
its :class:`~crishim.registry.client.RegistryClient` and
:class:`~crishim.registry.puller.Puller`, the PullImage prologue
(:func:`~crishim.registry.request.pull_request`), the ``registry.import``
span, and fetching again what went missing before a commit.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable

from opentelemetry import trace

from crishim.errors import BackendError, Unavailable
from crishim.model import ImageRecord
from crishim.reference import Reference
from crishim.types import BackendContext, ImportRequest, PullRequest

from .client import RegistryClient
from .deadline import Deadline
from .options import PullOptions
from .plan import ImageSource
from .puller import Puller
from .request import Lookup, pull_request

log = logging.getLogger(__name__)

#: How often a pull fetches again the blobs that went missing before its commit.
COMMIT_ATTEMPTS = 3

#: What a backend does with an image source: fetch into its sink and commit.
Store = Callable[[ImageSource, Reference], ImageRecord]


class Pulling:
    """One pulling backend's registry client and puller, and the steps around its commit."""

    def __init__(self, context: BackendContext, options: PullOptions, tracer: trace.Tracer) -> None:
        self.name = context.name
        self.tracer = tracer
        self.registry = RegistryClient(options, context.config_dir)
        self.puller = Puller(
            context.name,
            context.platform,
            tracer,
            max_concurrent_downloads=options.max_concurrent_downloads,
            artifacts=options.artifacts,
        )

    def start(self) -> None:
        """Build every configured endpoint now: a bad CA or client key fails the start."""
        try:
            self.registry.start()
        except (OSError, ssl.SSLError) as exc:
            raise BackendError(self.name, f"registry TLS settings: {exc}") from exc

    def close(self) -> None:
        self.registry.close()

    def pull(self, backend: Lookup, request: PullRequest, store: Store) -> ImageRecord:
        """A PullImage: :func:`~crishim.registry.request.pull_request`'s prologue,
        then ``store`` over the pull's registry session."""

        def fetch(ref: Reference, deadline: Deadline) -> ImageRecord:
            return store(self.registry.session(ref, request.auth, deadline), ref)

        return pull_request(backend, self.name, self.tracer, request, fetch, self.registry)

    def import_image(self, request: ImportRequest, store: Store) -> ImageRecord:
        """An import: ``store`` over the request's source, in the ``registry.import`` span."""
        attributes = {"crishim.backend": self.name, "crishim.image.reference": str(request.ref)}
        with self.tracer.start_as_current_span("registry.import", attributes=attributes):
            return store(request.source, request.ref)

    def until_committed(
        self, attempt: Callable[[], ImageRecord | None], ref: Reference, *, lost: str, gave_up: str
    ) -> ImageRecord:
        """``attempt()`` (fetch every blob, then commit) until it commits.

        It answers None when blobs went missing between its fetch and its
        commit (``lost`` says how: removed, collected); they are fetched
        again, up to :data:`COMMIT_ATTEMPTS` times in all, then the pull is
        UNAVAILABLE with the message ``gave_up``.
        """
        for _ in range(COMMIT_ATTEMPTS):
            record = attempt()
            if record is not None:
                return record
            log.info(
                "backend %s: %s: blobs were %s meanwhile; fetching again", self.name, ref, lost
            )
        raise Unavailable(gave_up)
