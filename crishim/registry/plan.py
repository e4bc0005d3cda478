"""What a pull works with: the plan it resolved, where it reads, where it writes.

A pull reads from an :class:`ImageSource` (a registry
:class:`~crishim.registry.session.Session`, or a local layout or archive for
``crishim import``) and writes blobs into a :class:`BlobSink`, the only
part that differs between backends: an OCI-layout content store,
containerd's content store, a third party's own. The :class:`Plan` says
what the pull resolved and what the backend commits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

from crishim.errors import DataLoss
from crishim.oci.spec import Descriptor, InvalidContent
from crishim.reference import Reference
from crishim.types import PullProgress

from .deadline import Deadline
from .download import ByteSink
from .session import Fetched


def parse_descriptor(raw: object, what: str) -> Descriptor:
    """The checked descriptor ``raw`` holds; malformed, it is DATA_LOSS (the registry sent it)."""
    try:
        return Descriptor.parse(raw, what)
    except InvalidContent as exc:
        raise DataLoss(str(exc)) from None


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

    def names(self, ref: Reference) -> list[str]:
        """The names a pull of ``ref`` gives the image: by tag ``name:tag`` and
        ``name@<digest>`` (the digest the tag resolved to), by digest ``name@<digest>``."""
        if ref.digest:
            return [f"{ref.repository}@{ref.digest}"]
        return [f"{ref.repository}:{ref.tag}", f"{ref.repository}@{self.top.digest}"]

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
