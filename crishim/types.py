"""What plugins give crishim and what crishim gives plugins.

A plugin module implements the ``crishim_backend_types`` hook (see
:mod:`crishim.hookspecs`) and returns :class:`BackendType` values. The
container validates each configured instance's ``options`` with the type's
``options_model`` and calls ``factory(context, options)`` once per instance;
the returned object must follow the :class:`Backend` protocol. Subclassing
:class:`IndexedBackend` gives the lookups for free: build
:class:`~crishim.model.ImageRecord` objects, hand them to ``publish``.

Filters are offered the same way (``crishim_filter_types`` returns
:class:`FilterType` values); a :class:`Filter` gives each image record a
:class:`Verdict`. Pull policies too (``crishim_pull_policy_types`` returns
:class:`PullPolicyType` values): a :class:`PullPolicy` gives each pull a
:class:`Decision` before anything is fetched, an :class:`ImagePolicy` again
once the pull has resolved what it fetches (:class:`ResolvedImage`).

A backend that pulls also follows :class:`Puller` (and, to load files with
``crishim import``, :class:`Importer`): the catalog recognises it by its
``pull_image`` method, asks the first such backend configured, and what
that backend raises is the pull's answer (docs/plugins.md, "The pulling
contract").
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from opentelemetry import trace
from pydantic import BaseModel, ConfigDict

from crishim.errors import NotSupported
from crishim.index import ImageIndex
from crishim.model import FilesystemUsage, ImageRecord, Platform
from crishim.reference import Reference

if TYPE_CHECKING:
    from crishim.registry.puller import ImageSource

__all__ = [
    "ALLOW",
    "VISIBLE",
    "Backend",
    "BackendContext",
    "BackendOptions",
    "BackendType",
    "Decision",
    "Filter",
    "FilterContext",
    "FilterOptions",
    "FilterType",
    "HandlerAware",
    "ImagePolicy",
    "ImportRequest",
    "Importer",
    "IndexedBackend",
    "PodContext",
    "PolicyContext",
    "PolicyOptions",
    "PullAuth",
    "PullPolicy",
    "PullPolicyType",
    "PullProgress",
    "PullRequest",
    "Puller",
    "ResolvedImage",
    "Verdict",
]


class BackendOptions(BaseModel):
    """Base for a backend type's options; unknown keys are config errors.

    A pydantic model, frozen: the container validates a configured
    instance's ``options`` mapping with the type's subclass of it and hands
    the factory the model. An error names the key:
    ``backends[0].options.catalog: required key is missing``.

    Example::

        from pydantic import Field

        from crishim.types import BackendOptions


        class JsonCatalogOptions(BackendOptions):
            catalog: str  # required
            rescan_interval: float = Field(default=2.0, ge=0)
    """

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class BackendContext:
    """What crishim tells a backend instance about where it runs.

    The first argument of every backend factory. Tests build one directly
    to drive a backend without a server.

    Example::

        >>> from pathlib import Path
        >>> from crishim.model import Platform
        >>> context = BackendContext(
        ...     name="catalog", platform=Platform("linux", "amd64"), config_dir=Path("/etc/crishim")
        ... )
        >>> context.resolve_path("images.json")
        PosixPath('/etc/crishim/images.json')
        >>> context.resolve_path("/srv/images.json")
        PosixPath('/srv/images.json')
        >>> context.is_pinned(["docker.io/library/busybox:latest"])
        False
    """

    #: The instance name from the config file (unique).
    name: str
    #: The platform image indexes are resolved to.
    platform: Platform
    #: The directory of the config file; relative paths in options resolve here.
    config_dir: Path
    #: A directory of this instance's own for persistent state (snapshots,
    #: stores); created by the backend when it first needs it. None when the
    #: backend runs without state (some tests).
    state_dir: Path | None = None
    #: Where a plugin gets tracers for spans of its own (OpenTelemetry API
    #: only: ``context.tracer_provider.get_tracer(__name__)``). A no-op
    #: provider unless tracing is configured.
    tracer_provider: trace.TracerProvider = field(default_factory=trace.NoOpTracerProvider)
    #: Whether the config's ``pinned`` list pins an image with any of these
    #: normalised names (``name:tag``, ``name@digest``). Backends whose own
    #: store records pins (containerd's CRI pin label) use it when they name
    #: an image; everyone else can ignore it: the catalog reports pins.
    is_pinned: Callable[[Iterable[str]], bool] = field(default=lambda names: False)
    #: The CRI runtime handlers this instance serves (``backends[].runtime_handlers``;
    #: ``""`` is the default handler). Every one of them resolves image indexes to
    #: ``platform``: a handler of another platform is another backend instance.
    runtime_handlers: tuple[str, ...] = ("",)

    def resolve_path(self, path: str | Path) -> Path:
        """An option path made absolute against the config file's directory."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self.config_dir / p)


@runtime_checkable
class Backend(Protocol):
    """One configured backend instance, as the catalog calls it.

    Lookups (``get_image``, ``match_id_prefix``) run on every ImageStatus
    call from many threads at once: answer from memory, never from disk or
    network. ``start`` runs once before the server accepts calls and may do
    I/O (raise :class:`crishim.errors.BackendError` to stop start-up with a
    message); ``close`` runs once at shutdown. What a method raises on
    purpose is a :mod:`crishim.errors` error and becomes that status;
    anything else is a fault, logged with the backend's name, that costs
    only this backend's answer. Most backends subclass
    :class:`IndexedBackend` rather than implement this from scratch.

    Example::

        from crishim.errors import ReadOnly
        from crishim.model import ImageRecord
        from crishim.reference import RefKind
        from crishim.types import Backend

        ONE = ImageRecord(id="sha256:" + "ab" * 32, repo_tags=("example.com/one:1",), size=1234)


        class OneImage:  # every method of the protocol, for a backend of one image
            def __init__(self, context, options):
                self.name = context.name

            def start(self): ...

            def close(self): ...

            def get_image(self, ref):
                if ref.kind is RefKind.ID:
                    return ONE if ref.digest == ONE.id else None
                return ONE if ref.tagged() in ONE.repo_tags else None

            def match_id_prefix(self, prefix):
                return [ONE.id] if ONE.id.removeprefix("sha256:").startswith(prefix) else []

            def list_images(self):
                return [ONE]

            def filesystem_usage(self):
                return ()

            def remove_image(self, record):
                raise ReadOnly(f"backend {self.name!r} is read-only")


        assert issubclass(OneImage, Backend)
    """

    def start(self) -> None: ...

    def close(self) -> None: ...

    def get_image(self, ref: Reference) -> ImageRecord | None:
        """The image a NAME or ID reference names, or None when unknown."""
        ...

    def match_id_prefix(self, prefix: str) -> Sequence[str]:
        """Full IDs starting with ``prefix`` (hex, no ``sha256:``); two are enough."""
        ...

    def list_images(self) -> Iterable[ImageRecord]:
        """Every image this backend serves, once each."""
        ...

    def filesystem_usage(self) -> Sequence[FilesystemUsage]:
        """What the backend's store occupies, per filesystem; no walk per call."""
        ...

    def remove_image(self, record: ImageRecord) -> None:
        """Remove every name of the image; raise NotSupported or ReadOnly if refused."""
        ...


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


@runtime_checkable
class HandlerAware(Protocol):
    """A backend whose answers depend on the runtime handler asked for.

    Most backends are not: every handler an instance serves resolves to its
    one platform, so they answer alike. A backend that forwards calls to
    another CRI runtime (``cri``) passes the handler on instead: the catalog
    asks it, once per handler it serves other than ``""``, for the backend as
    it answers for that handler, and calls that for the handler's calls.
    ``start`` and ``close`` are called on the backend itself only.

    Example::

        class Forwarding(IndexedBackend):
            def for_runtime_handler(self, handler):
                # the same upstream, asked with the handler on every call
                return HandlerView(self.upstream, handler, name=f"{self.name}[{handler}]")
    """

    def for_runtime_handler(self, handler: str) -> Backend: ...


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


@dataclass(frozen=True)
class BackendType:
    """A kind of backend a plugin offers, e.g. ``oci-dir``.

    What the ``crishim_backend_types`` hook returns. ``package`` and
    ``version`` are filled in by crishim from the distribution that
    declares the plugin's entry point (``crishim plugins`` shows them).

    Example::

        @hookimpl
        def crishim_backend_types():
            return [
                BackendType(
                    name="json-catalog",
                    factory=JsonCatalogBackend,
                    options_model=JsonCatalogOptions,
                    description="images a JSON catalogue names",
                )
            ]
    """

    #: The ``type`` used in the config file.
    name: str
    #: Called once per configured instance: ``factory(context, options)``.
    factory: Callable[[BackendContext, Any], Backend]
    #: Validates the instance's ``options`` mapping.
    options_model: type[BackendOptions] = BackendOptions
    description: str = ""
    #: Filled in by crishim: the distribution that registered the type.
    package: str = field(default="", compare=False)
    version: str = field(default="", compare=False)


@dataclass(frozen=True, slots=True)
class Verdict:
    """A filter's judgement of one image record.

    A hidden image is absent for ImageStatus (OK, ``image`` unset) and
    RemoveImage (OK, nothing removed); ListImages and StreamImages leave it
    out unless ``listed`` is set.

    Example::

        def check(self, record):
            if any(tag.endswith(":latest") for tag in record.repo_tags):
                return Verdict(hidden=True, reason="tagged latest")
            return VISIBLE
    """

    #: True: the CRI must not see the image.
    hidden: bool = False
    #: Why the image is hidden; logged at debug level on every call that hides it.
    reason: str = ""
    #: Still listed by ListImages/StreamImages although hidden.
    listed: bool = False
    #: The configured filter instance that hid the image; set by crishim.
    filter: str = ""


#: The verdict of a filter that has no objection (one shared object).
VISIBLE = Verdict()


class FilterOptions(BaseModel):
    """Base for a filter type's options; unknown keys are config errors.

    Example::

        class NoLatestOptions(FilterOptions):
            list_hidden: bool = False  # filters[i].options.list_hidden
    """

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class FilterContext:
    """What crishim tells a filter instance about where it runs.

    The first argument of every filter factory.

    Example::

        class Allowlist:
            def __init__(self, context, options):
                path = context.config_dir / options.file  # relative to the config file
                self.allowed = frozenset(path.read_text().split())
    """

    #: The instance name from the config file (unique among filters).
    name: str
    #: The directory of the config file; relative paths in options resolve here.
    config_dir: Path


@runtime_checkable
class Filter(Protocol):
    """One configured filter instance, as the catalog calls it.

    ``check`` is called once per image record (records are immutable; the
    verdict is kept with the record), from any thread. It must not do I/O:
    judge from the record alone. A ``check`` that raises, or returns
    something else than a :class:`Verdict`, hides the record.

    Example::

        class NoLatest:
            def __init__(self, context, options):
                self.list_hidden = options.list_hidden

            def check(self, record):
                if any(tag.endswith(":latest") for tag in record.repo_tags):
                    return Verdict(hidden=True, reason="tagged latest", listed=self.list_hidden)
                return VISIBLE
    """

    def check(self, record: ImageRecord) -> Verdict: ...


@dataclass(frozen=True)
class FilterType:
    """A kind of filter a plugin offers, e.g. ``embedded-filter``.

    What the ``crishim_filter_types`` hook returns.

    Example::

        @hookimpl
        def crishim_filter_types():
            return [FilterType(name="no-latest", factory=NoLatest, options_model=NoLatestOptions)]
    """

    #: The ``type`` used in the config file's ``filters`` list.
    name: str
    #: Called once per configured instance: ``factory(context, options)``.
    factory: Callable[[FilterContext, Any], Filter]
    #: Validates the instance's ``options`` mapping.
    options_model: type[FilterOptions] = FilterOptions
    description: str = ""
    #: Not None: when the config has no ``filters`` key, an instance of this
    #: type named after it, with these options, is part of the default chain
    #: (default-chain types run in name order). Only for filters that enforce
    #: the CRI contract itself.
    default_chain_options: Mapping[str, Any] | None = None
    #: Filled in by crishim: the distribution that registered the type.
    package: str = field(default="", compare=False)
    version: str = field(default="", compare=False)


# -- pull policies -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Decision:
    """A pull policy's answer: allowed, or denied with a reason for the client.

    A denial is PERMISSION_DENIED, or FAILED_PRECONDITION with
    ``status="failed_precondition"`` (the request could be allowed if it
    were made differently: by digest, say). The reason goes into the gRPC
    message as it is: never put a secret in it.

    Example::

        >>> Decision.deny("registry evil.example is not allowed").allowed
        False
        >>> Decision.precondition("pull by digest").status
        'failed_precondition'
        >>> ALLOW.allowed
        True
    """

    allowed: bool = True
    reason: str = ""
    status: Literal["permission_denied", "failed_precondition"] = "permission_denied"

    @classmethod
    def deny(cls, reason: str) -> Decision:
        """Refused: PERMISSION_DENIED."""
        return cls(False, reason)

    @classmethod
    def precondition(cls, reason: str) -> Decision:
        """Refused as asked: FAILED_PRECONDITION."""
        return cls(False, reason, "failed_precondition")


#: The decision of a policy that has no objection (one shared object).
ALLOW = Decision()


@dataclass(frozen=True)
class ResolvedImage:
    """What a pull is about to make visible, for :class:`ImagePolicy`.

    ``digest`` is what the reference resolved to (an index or a manifest):
    the digest signatures are made over, and what a re-pull by digest
    names. ``source`` reads more from the same registry with the pull's own
    credentials and deadline (``source.resolve("sha256-<hex>.sig", None)``
    fetches a cosign signature manifest, ``source.blob(...)`` its layers);
    it is None when the image did not come through crishim's registry
    client (a backend pulling through another runtime): then only the
    digests are known.

    Example::

        def check_image(self, request, image):
            if image.digest not in self.trusted_digests:
                return Decision.deny(f"{request.ref} resolved to {image.digest}, not trusted")
            return ALLOW
    """

    ref: Reference
    digest: str
    media_type: str
    #: The platform's manifest (``digest`` itself unless that is an index).
    manifest_digest: str = ""
    manifest: Mapping[str, Any] = field(default_factory=dict)
    #: The image's config digest: its CRI image ID (an artifact's: its manifest digest).
    image_id: str = ""
    #: Set for OCI artifacts (image volumes): the artifact type.
    artifact_type: str = ""
    source: ImageSource | None = field(default=None, compare=False)
    #: Reads the image config (JSON, checked against its digest); fetched on
    #: first use, so policies that do not look cost nothing.
    read_config: Callable[[], Mapping[str, Any]] = field(
        default=lambda: {}, compare=False, repr=False
    )


class PolicyOptions(BaseModel):
    """Base for a pull policy type's options; unknown keys are config errors.

    Example::

        class AllowlistOptions(PolicyOptions):
            registries: list[str]  # pull_policies[i].options.registries
    """

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class PolicyContext:
    """What crishim tells a pull policy instance about where it runs.

    The first argument of every pull policy factory.

    Example::

        class Allowlist:
            def __init__(self, context, options):
                self.name = context.name
                self.tracer = context.tracer_provider.get_tracer(__name__)
    """

    #: The instance name from the config file (unique among pull policies).
    name: str
    #: The directory of the config file; relative paths in options resolve here.
    config_dir: Path
    #: Where the policy gets tracers for spans of its own (a no-op unless tracing is on).
    tracer_provider: trace.TracerProvider = field(default_factory=trace.NoOpTracerProvider)


@runtime_checkable
class PullPolicy(Protocol):
    """Judges a pull from its request, before anything is fetched.

    ``check_request`` runs once per PullImage (and ``crishim pull``), from
    any thread, before the pulling backend is asked; it must be quick. The
    request carries the reference, the runtime handler, the pod
    (``request.pod``) and ``user_specified_image``; never log ``auth``.

    Example::

        class Allowlist:
            def __init__(self, context, options):
                self.registries = frozenset(options.registries)

            def check_request(self, request):
                if request.ref.domain not in self.registries:
                    return Decision.deny(f"registry {request.ref.domain} is not allowed")
                return ALLOW
    """

    def check_request(self, request: PullRequest) -> Decision: ...


@runtime_checkable
class ImagePolicy(Protocol):
    """Judges a pull once it is resolved, before the image is made visible.

    ``check_image`` runs once per pull, after the manifest is resolved and
    before any layer is stored as part of the image, with the digest and
    the means to fetch more (signatures, attestations). It may do I/O
    within its ``timeout``. A policy class may offer both checks.

    Example::

        class PinnedDigests:
            def check_image(self, request, image):
                if image.digest != self.expected.get(request.ref.repository, image.digest):
                    return Decision.deny(f"{request.ref} is not the pinned {image.digest}")
                return ALLOW
    """

    def check_image(self, request: PullRequest, image: ResolvedImage) -> Decision: ...


@dataclass(frozen=True)
class PullPolicyType:
    """A kind of pull policy a plugin offers, e.g. ``registry-policy``.

    What the ``crishim_pull_policy_types`` hook returns.

    Example::

        @hookimpl
        def crishim_pull_policy_types():
            return [PullPolicyType(name="allowlist", factory=Allowlist, options_model=Options)]
    """

    #: The ``type`` used in the config file's ``pull_policies`` list.
    name: str
    #: Called once per configured instance: ``factory(context, options)``;
    #: returns a :class:`PullPolicy`, an :class:`ImagePolicy` or both.
    factory: Callable[[PolicyContext, Any], object]
    #: Validates the instance's ``options`` mapping.
    options_model: type[PolicyOptions] = PolicyOptions
    description: str = ""
    #: Filled in by crishim: the distribution that registered the type.
    package: str = field(default="", compare=False)
    version: str = field(default="", compare=False)


class IndexedBackend:
    """A backend that answers from an :class:`ImageIndex` it publishes.

    Subclasses implement :meth:`start` to build records and call
    :meth:`publish`; lookups, listing and the Backend protocol's defaults
    come from here. ``publish`` may be called again at any time from any
    thread: readers see the old index or the new one. The defaults:
    ``filesystem_usage`` reports nothing, ``remove_image`` refuses with
    :class:`crishim.errors.NotSupported` (FAILED_PRECONDITION); ``name``
    is the instance's config name.

    Example::

        class JsonImages(IndexedBackend):
            def __init__(self, context, options):
                super().__init__(context)
                self.path = context.resolve_path(options.path)

            def start(self):  # once, before the server accepts calls: I/O is fine here
                self.publish(read_records(self.path))

            def remove_image(self, record):
                raise ReadOnly(f"backend {self.name!r} is read-only")
    """

    def __init__(self, context: BackendContext) -> None:
        self.context = context
        self.name = context.name
        self._index = ImageIndex()
        self._publish_lock = threading.Lock()

    @property
    def index(self) -> ImageIndex:
        """The index published last (an empty one before the first ``publish``)."""
        return self._index

    def publish(self, records: Iterable[ImageRecord] | ImageIndex) -> None:
        """Replace the index, from records (one per image; names merged by ID) or a built one."""
        index = records if isinstance(records, ImageIndex) else ImageIndex(records)
        with self._publish_lock:
            self._index = index

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass

    def get_image(self, ref: Reference) -> ImageRecord | None:
        return self._index.get(ref)

    def match_id_prefix(self, prefix: str) -> Sequence[str]:
        return self._index.match_id_prefix(prefix)

    def list_images(self) -> Iterable[ImageRecord]:
        return iter(self._index)

    def filesystem_usage(self) -> Sequence[FilesystemUsage]:
        return ()

    def remove_image(self, record: ImageRecord) -> None:
        raise NotSupported(f"backend {self.name!r} does not remove images")
