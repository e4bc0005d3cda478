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


class BackendOptions(BaseModel):
    """Base for a backend type's options; unknown keys are config errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class BackendContext:
    """What crishim tells a backend instance about where it runs."""

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
    I/O; ``close`` runs once at shutdown.
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

    ``repr()`` names which fields are set, not their values.
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
    """

    namespace: str = ""
    name: str = ""
    uid: str = ""
    annotations: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PullRequest:
    """One PullImage call, as a pulling backend receives it."""

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
    """Where one blob of a pull stands, as reported to ``PullRequest.progress``."""

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

    ``pull_image`` fetches the image the reference names into the backend's
    store and returns its record once it is visible (all blobs committed).
    It raises the domain errors of :mod:`crishim.errors`: ImageNotFound,
    PermissionDenied/Unauthenticated, Unavailable, DataLoss,
    DeadlineExceeded/Cancelled.
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
    """

    def for_runtime_handler(self, handler: str) -> Backend: ...


@dataclass(frozen=True)
class ImportRequest:
    """One image of a file to load into a backend's store (``crishim import``)."""

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
    """

    def import_image(self, request: ImportRequest) -> ImageRecord: ...


@dataclass(frozen=True)
class BackendType:
    """A kind of backend a plugin offers, e.g. ``oci-dir``."""

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
    """

    #: True: the CRI must not see the image.
    hidden: bool = False
    #: Why the image is hidden; logged at debug level on every call that hides it.
    reason: str = ""
    #: Still listed by ListImages/StreamImages although hidden.
    listed: bool = False
    #: The configured filter instance that hid the image; set by crishim.
    filter: str = ""


#: The verdict of a filter that has no objection.
VISIBLE = Verdict()


class FilterOptions(BaseModel):
    """Base for a filter type's options; unknown keys are config errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class FilterContext:
    """What crishim tells a filter instance about where it runs."""

    #: The instance name from the config file (unique among filters).
    name: str
    #: The directory of the config file; relative paths in options resolve here.
    config_dir: Path


@runtime_checkable
class Filter(Protocol):
    """One configured filter instance, as the catalog calls it.

    ``check`` is called once per image record (records are immutable; the
    verdict is kept with the record), from any thread. It must not do I/O:
    judge from the record alone.
    """

    def check(self, record: ImageRecord) -> Verdict: ...


@dataclass(frozen=True)
class FilterType:
    """A kind of filter a plugin offers, e.g. ``embedded-filter``."""

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
    """Base for a pull policy type's options; unknown keys are config errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class PolicyContext:
    """What crishim tells a pull policy instance about where it runs."""

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
    """

    def check_request(self, request: PullRequest) -> Decision: ...


@runtime_checkable
class ImagePolicy(Protocol):
    """Judges a pull once it is resolved, before the image is made visible.

    ``check_image`` runs once per pull, after the manifest is resolved and
    before any layer is stored as part of the image, with the digest and
    the means to fetch more (signatures, attestations). It may do I/O
    within its ``timeout``. A policy class may offer both checks.
    """

    def check_image(self, request: PullRequest, image: ResolvedImage) -> Decision: ...


@dataclass(frozen=True)
class PullPolicyType:
    """A kind of pull policy a plugin offers, e.g. ``registry-policy``."""

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
    thread: readers see the old index or the new one.
    """

    def __init__(self, context: BackendContext) -> None:
        self.context = context
        self.name = context.name
        self._index = ImageIndex()
        self._publish_lock = threading.Lock()

    @property
    def index(self) -> ImageIndex:
        return self._index

    def publish(self, records: Iterable[ImageRecord] | ImageIndex) -> None:
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
