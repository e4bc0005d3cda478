"""The ``json-catalog`` backend: an in-memory index over a catalogue and a store.

* The store is a directory another program fills with blobs in the OCI
  content-addressed shape, ``<store>/blobs/<algorithm>/<hex>`` (the
  ``blobs/`` of an OCI image layout); this backend only reads it.
* The catalogue (:mod:`crishim_json_catalog.catalog`) names the images:
  each entry's manifest (or image index) is resolved to the configured
  platform by crishim's own resolver (:class:`crishim.oci.resolve.Resolver`),
  which checks every manifest and config blob against its digest and every
  layer's size, and carries an embedded or schema-1 manifest as a record
  without config for the filters to hide. A broken entry is logged and
  skipped; the rest serve.
* Live: every ``rescan_interval`` seconds the catalogue's identity (inode,
  size, modification time) is compared with the one read; a changed
  catalogue is read again and the new index replaces the old in one
  assignment. A catalogue that became unreadable keeps the old index.
* Read-only: RemoveImage of one of its images is FAILED_PRECONDITION.

Lookups never touch the disk: they are answered from the published index.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence

from pydantic import Field

from crishim.config import ExistingDirectory, ExistingFile
from crishim.errors import BackendError, ReadOnly
from crishim.model import FilesystemUsage, ImageRecord
from crishim.oci.layout import Layout, file_identity, measure
from crishim.oci.resolve import BrokenEntry, MissingBlob, Resolver
from crishim.oci.spec import CONTAINERD_NAME
from crishim.types import BackendContext, BackendOptions, IndexedBackend

from .catalog import CatalogError, CatalogImage, read_catalog

log = logging.getLogger(__name__)

#: Seconds between walks of the store for ImageFsInfo (a walk costs one
#: stat per blob, so it is not done on every catalogue check).
USAGE_INTERVAL = 60.0


class JsonCatalogOptions(BackendOptions):
    # ExistingFile and ExistingDirectory: check-config (and serve) report a
    # missing path with its key, before anything starts

    #: The catalogue file (relative: to the config file).
    catalog: ExistingFile
    #: The store holding ``blobs/<algorithm>/<hex>`` (relative: to the config file).
    store: ExistingDirectory
    #: Seconds between checks of the catalogue for changes; 0: read once at start.
    rescan_interval: float = Field(default=2.0, ge=0)


class JsonCatalogBackend(IndexedBackend):
    """Serves the images a JSON catalogue names from memory; blobs stay in the store."""

    def __init__(self, context: BackendContext, options: JsonCatalogOptions) -> None:
        super().__init__(context)
        self.options = options
        self.catalog = context.resolve_path(options.catalog)
        self.store = context.resolve_path(options.store)
        # Layout reads blobs/<algorithm>/<hex> under the store (a symlink must
        # stay inside it); the resolver turns a catalogue entry into a record.
        self._blobs = Layout(self.store, context.platform)
        self._resolver = Resolver(
            self._blobs, context.platform, extra={"catalog": str(self.catalog)}
        )
        self._read: tuple[int, int, int] | None = None
        self._usage: tuple[FilesystemUsage, ...] = ()
        self._measured = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------

    def start(self) -> None:
        if not (self.store / "blobs").is_dir():
            raise BackendError(self.name, f"the store {self.store} has no blobs/ directory")
        try:
            self.refresh()
        except CatalogError as exc:
            raise BackendError(self.name, str(exc)) from None
        if self.options.rescan_interval > 0:
            self._thread = threading.Thread(
                target=self._rescan_loop, name=f"{self.name}-rescan", daemon=True
            )
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # -- reading ---------------------------------------------------------

    def refresh(self) -> bool:
        """Read the catalogue again if it changed and publish its images; True if it did.

        Raises CatalogError when the catalogue cannot be read (the index
        published before stays).
        """
        with self._lock:
            identity = file_identity(self.catalog)
            if identity is not None and identity == self._read:
                return False
            started = time.monotonic()
            entries, problems = read_catalog(self.catalog)
            records = list(self._records(entries, problems))
            for problem in problems:
                log.warning("backend %s: %s: skipped: %s", self.name, self.catalog.name, problem)
            self.publish(records)
            self._read = identity
            self._measure()
            log.info(
                "backend %s: %d images from %s (%d entries skipped, %.2fs)",
                self.name,
                len(self.index),
                self.catalog,
                len(problems),
                time.monotonic() - started,
            )
            return True

    def _records(
        self, entries: Sequence[CatalogImage], problems: list[str]
    ) -> Iterator[ImageRecord]:
        try:
            for entry in entries:
                label = entry.names[0] if entry.names else entry.manifest
                try:
                    # the descriptor's size is the stored blob's; the resolver
                    # then checks the blob against its digest as it reads it
                    size = self._blobs.blob_size(entry.manifest)
                except MissingBlob:
                    problems.append(f"{label}: manifest {entry.manifest} is not in the store")
                    continue
                except (BrokenEntry, OSError) as exc:
                    problems.append(f"{label}: manifest {entry.manifest}: {exc}")
                    continue
                # one resolver entry per name; the index merges them by image ID
                for name in entry.names or ("",):
                    descriptor: dict[str, object] = {"digest": entry.manifest, "size": size}
                    if entry.media_type:
                        descriptor["mediaType"] = entry.media_type
                    if name:
                        descriptor["annotations"] = {CONTAINERD_NAME: name}
                    result = self._resolver.resolve(descriptor)
                    if result.record is None:
                        problems.append(f"{name or label}: {result.problem}")
                    else:
                        yield result.record
        finally:
            self._resolver.clear()

    def _measure(self) -> None:
        self._usage = (measure(self.store / "blobs"),)
        self._measured = time.monotonic()

    def _rescan_loop(self) -> None:
        while not self._stop.wait(self.options.rescan_interval):
            try:
                if not self.refresh() and time.monotonic() - self._measured >= USAGE_INTERVAL:
                    with self._lock:
                        self._measure()
            except CatalogError as exc:
                log.error("backend %s: %s; still serving the images read before", self.name, exc)
            except Exception:
                log.exception("backend %s: rescan failed; still serving the old index", self.name)

    # -- the Backend protocol beyond IndexedBackend's lookups ------------

    def filesystem_usage(self) -> Sequence[FilesystemUsage]:
        return self._usage

    def remove_image(self, record: ImageRecord) -> None:
        raise ReadOnly(
            f"backend {self.name!r} serves the catalogue {self.catalog} read-only; "
            f"the program that writes it removes {record.id}"
        )


__all__ = ["JsonCatalogBackend", "JsonCatalogOptions"]
