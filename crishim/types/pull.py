"""Pulls and imports: the request a pulling backend receives and what it reports.

Re-exported by :mod:`crishim.types`, which is where plugins import them from.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from crishim.model import ImageRecord
from crishim.reference import Reference

if TYPE_CHECKING:
    from crishim.registry.puller import ImageSource
    from crishim.types.policy import ResolvedImage


@dataclass(frozen=True)
class PullAuth:
    """Credentials from ``PullImageRequest.auth``; never logged or shown.

    ``repr()`` names which fields are set, not their values; a PullAuth
    with nothing set is false. A pulling backend hands it to
    :meth:`crishim.registry.client.RegistryClient.session`, which turns it
    into registry credentials.

    Example::

        >>> auth = PullAuth(username="robot", password="s3cret")
        >>> auth
        PullAuth(<username, password>)
        >>> f"pulling with {auth}"
        'pulling with PullAuth(<username, password>)'
        >>> bool(PullAuth())
        False
    """

    username: str = ""
    password: str = ""
    #: base64 of ``user:password``
    auth: str = ""
    server_address: str = ""
    identity_token: str = ""
    registry_token: str = ""

    def __repr__(self) -> str:
        present = [f for f in self.__dataclass_fields__ if getattr(self, f)]
        return f"PullAuth(<{', '.join(present) or 'empty'}>)"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return any(getattr(self, f) for f in self.__dataclass_fields__)


@dataclass(frozen=True)
class PodContext:
    """The pod a PullImage is for (``PullImageRequest.sandbox_config``).

    kubelet sends it with every pull it makes for a pod; pulls by crictl,
    ``crishim pull`` and other tools usually carry none (``PullRequest.pod``
    is None then).

    Example::

        def check_request(self, request):
            if request.pod is not None and request.pod.namespace in self.locked:
                return Decision.deny(f"namespace {request.pod.namespace} may not pull")
            return ALLOW
    """

    namespace: str = ""
    name: str = ""
    uid: str = ""
    annotations: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PullRequest:
    """One PullImage call (or ``crishim pull``), as a pulling backend receives it.

    Example::

        import time

        from crishim.errors import Cancelled, DeadlineExceeded


        def pull_image(self, request):
            for layer in self.layers_of(request.ref):
                if request.cancelled():
                    raise Cancelled(f"pull of {request.ref} cancelled")
                if request.deadline is not None and time.monotonic() > request.deadline:
                    raise DeadlineExceeded(f"pull of {request.ref} ran out of time")
                self.fetch(layer, request.auth)
            return self.commit(request.ref)
    """

    ref: Reference
    auth: PullAuth | None = None
    #: ``time.monotonic()`` value by which the pull must be done, or None.
    deadline: float | None = None
    #: Returns True once the caller has gone away (cancelled, disconnected).
    cancelled: Callable[[], bool] = field(default=lambda: False, compare=False)
    #: Annotations from the request's ImageSpec.
    annotations: Mapping[str, str] = field(default_factory=dict)
    #: Called (from any thread) as blobs are fetched, for progress displays
    #: such as ``crishim pull``; None for PullImage calls.
    progress: Callable[[PullProgress], None] | None = field(default=None, compare=False)
    #: ``ImageSpec.runtime_handler``: the runtime handler the image is pulled
    #: for (``""``: the default). The catalog only asks backends that serve it,
    #: so a backend pulls for its own ``context.platform``; one that forwards
    #: to another CRI runtime passes it on.
    runtime_handler: str = ""
    #: ``ImageSpec.user_specified_image``: the reference as the pod spec
    #: wrote it, when kubelet knows it (``""`` otherwise); for policies and logs.
    user_specified_image: str = ""
    #: The pod the pull is for, when the caller said (kubelet does).
    pod: PodContext | None = None
    #: Set by the catalog when an :class:`ImagePolicy` is configured: a
    #: pulling backend calls it once it knows what it will fetch (manifest
    #: resolved, nothing of the image visible yet); it raises to refuse the
    #: pull. Backends built on :class:`crishim.registry.puller.Puller` get
    #: this from :func:`crishim.registry.puller.admit`; one that does not
    #: call it is checked after its pull instead, from the image record.
    admit: Callable[[ResolvedImage], None] | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class PullProgress:
    """Where one blob of a pull stands, as reported to ``PullRequest.progress``.

    crishim's puller reports it for you; a backend fetching blobs its own
    way reports it itself (``crishim pull`` draws a bar per blob from it).

    Example::

        if request.progress is not None:
            event = PullProgress(digest, "layer", total=size, done=written, state="downloading")
            request.progress(event)
    """

    digest: str
    #: ``manifest``, ``config`` or ``layer``
    kind: str
    #: Bytes the blob has (its descriptor's size).
    total: int
    #: Bytes stored so far.
    done: int
    #: ``pending`` (part of the pull, not started), ``waiting`` (another pull
    #: is fetching it), ``downloading``, ``exists`` (already stored) or ``done``.
    state: str


@runtime_checkable
class Puller(Protocol):
    """A backend that can pull: the catalog asks the first one configured.

    A backend is recognised as pulling by having a ``pull_image`` method
    (``isinstance(backend, Puller)``); PullImage and ``crishim pull`` go to
    the first such backend in the configured order, and only to it.
    ``pull_image`` fetches the image the reference names into the backend's
    store and returns its record once it is visible (all blobs committed).
    What it raises is the pull's answer, never passed on to another
    backend: the domain errors of :mod:`crishim.errors` become their status
    (ImageNotFound NOT_FOUND, PermissionDenied/Unauthenticated, Unavailable,
    DataLoss, DeadlineExceeded/Cancelled, and NotSupported
    FAILED_PRECONDITION); anything else is INTERNAL, logged with the
    traceback. docs/plugins.md, "The pulling contract", says the rest.

    Example::

        from crishim.registry.client import Deadline


        class MyStore(IndexedBackend):
            def pull_image(self, request):
                deadline = Deadline(request.deadline, request.cancelled, f"pull {request.ref}")
                session = self.registry.session(request.ref, request.auth, deadline)
                plan = self.puller.plan(session, request.ref)
                self.puller.fetch(session, plan, self.sink, request.progress)
                return self.commit(request.ref, plan)
    """

    def pull_image(self, request: PullRequest) -> ImageRecord: ...


@dataclass(frozen=True)
class ImportRequest:
    """One image of a file to load into a backend's store (``crishim import``).

    Example::

        def import_image(self, request):
            plan = self.puller.plan(request.source, request.ref)
            self.puller.fetch(request.source, plan, self.sink, request.progress)
            return self.commit(request.ref, plan)
    """

    #: The name the image gets (a tag or a digest name).
    ref: Reference
    #: Where its content is read from: an image source of
    #: :mod:`crishim.registry.archive` (or any object with the
    #: :class:`crishim.registry.puller.ImageSource` methods).
    source: ImageSource
    #: As for pulls: called as blobs are stored.
    progress: Callable[[PullProgress], None] | None = field(default=None, compare=False)


@runtime_checkable
class Importer(Protocol):
    """A pulling backend that can also load images from files (``crishim import``).

    ``import_image`` stores the image ``request.source`` holds, verifying
    every digest, names it ``request.ref`` and returns its record. The
    built-in pulling backends use the same puller and commit as for pulls.
    ``crishim import`` uses the first configured backend that is one.

    Example::

        class MyStore(IndexedBackend):
            def pull_image(self, request): ...

            def import_image(self, request): ...


        assert issubclass(MyStore, Importer) and issubclass(MyStore, Puller)
    """

    def import_image(self, request: ImportRequest) -> ImageRecord: ...
