"""Backends: what a backend type registers, what an instance implements and is told.

Re-exported by :mod:`crishim.types`, which is where plugins import them from.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from opentelemetry import trace
from pydantic import BaseModel, ConfigDict

from crishim.errors import NotSupported
from crishim.index import ImageIndex
from crishim.model import FilesystemUsage, ImageRecord, Platform
from crishim.reference import Reference


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

    @property
    def index(self) -> ImageIndex:
        """The index published last (an empty one before the first ``publish``)."""
        return self._index

    def publish(self, records: Iterable[ImageRecord] | ImageIndex) -> None:
        """Replace the index, from records (one per image; names merged by ID) or a built one."""
        # one reference assignment: readers see the old index or the new one, no lock
        self._index = records if isinstance(records, ImageIndex) else ImageIndex(records)

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
