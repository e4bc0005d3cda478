"""The one place that calls backends: ordering, first answer, merging.

The catalog asks backends in the configured order; the first that knows an
image answers, and its answer is completed with the names other backends
give the same image ID. A backend that raises costs its own answer: the
error is logged with the backend's name and the next backend is asked.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from crishim.errors import AmbiguousReference, BackendError, CrishimError, NotSupported
from crishim.index import merge_records
from crishim.model import Answer, FilesystemUsage, ImageRecord
from crishim.reference import Reference, RefKind
from crishim.types import Backend, Puller, PullRequest

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class BackendHandle:
    """A configured backend instance: its config name, its type, the object."""

    name: str
    type: str
    backend: Backend


class PinnedPolicy:
    """Decides ``Image.pinned`` from exact names and ``prefix*`` patterns."""

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        self.exact = frozenset(p for p in patterns if not p.endswith("*"))
        self.prefixes = tuple(p[:-1] for p in patterns if p.endswith("*"))

    def __bool__(self) -> bool:
        return bool(self.exact or self.prefixes)

    def is_pinned(self, record: ImageRecord) -> bool:
        for name in (*record.repo_tags, *record.repo_digests):
            if name in self.exact or name.startswith(self.prefixes):
                return True
        return False


class Catalog:
    """Routes every CRI image call among the configured backends."""

    def __init__(
        self,
        backends: Sequence[BackendHandle],
        pinned: PinnedPolicy | None = None,
        *,
        fail_on_backend_error: bool = False,
    ) -> None:
        self.backends = tuple(backends)
        self.pinned = pinned or PinnedPolicy()
        self.fail_on_backend_error = fail_on_backend_error

    # -- lifecycle -------------------------------------------------------

    def start(self) -> None:
        for handle in self.backends:
            handle.backend.start()

    def close(self) -> None:
        for handle in reversed(self.backends):
            try:
                handle.backend.close()
            except Exception:
                log.exception("backend %s failed to close", handle.name)

    # -- calls -----------------------------------------------------------

    def image_status(self, ref: Reference) -> Answer | None:
        """The image ``ref`` names, or None when no backend knows it."""
        if ref.kind is RefKind.ID_PREFIX:
            if ref.also_name is not None:
                found = self._first(ref.also_name)
                if found is not None:
                    return found
            return self._by_prefix(ref)
        return self._first(ref)

    def list_images(self, ref: Reference | None = None) -> list[Answer]:
        """Every image once, by ID, with the names all backends give it."""
        if ref is not None:
            answer = self.image_status(ref)
            return [] if answer is None else [answer]
        merged: dict[str, tuple[ImageRecord, str]] = {}
        for handle in self.backends:
            records = self._call(handle, "list_images", lambda b: list(b.list_images()))
            for record in records or ():
                seen = merged.get(record.id)
                if seen is None:
                    merged[record.id] = (record, handle.name)
                else:
                    merged[record.id] = (merge_records(seen[0], record), seen[1])
        return [self._answer(record, name) for record, name in merged.values()]

    def remove_image(self, ref: Reference) -> Answer | None:
        """Remove every name of the image from every backend holding it.

        Returns what was removed, or None when no backend knew the image
        (removal is idempotent: absent is not an error).
        """
        answer = self.image_status(ref)
        if answer is None:
            return None
        image_id = answer.record.id
        for handle in self.backends:
            record = self._call(handle, "get_image", lambda b: b.get_image(_id_ref(image_id)))
            if record is not None:
                handle.backend.remove_image(record)
        return answer

    def filesystem_usage(self) -> list[FilesystemUsage]:
        """Usage per filesystem, summed over backends that share one."""
        by_mount: dict[str, FilesystemUsage] = {}
        for handle in self.backends:
            usages = self._call(handle, "filesystem_usage", lambda b: list(b.filesystem_usage()))
            for usage in usages or ():
                seen = by_mount.get(usage.mountpoint)
                if seen is None:
                    by_mount[usage.mountpoint] = usage
                else:
                    by_mount[usage.mountpoint] = FilesystemUsage(
                        mountpoint=usage.mountpoint,
                        used_bytes=seen.used_bytes + usage.used_bytes,
                        inodes_used=seen.inodes_used + usage.inodes_used,
                        timestamp_ns=max(seen.timestamp_ns, usage.timestamp_ns),
                    )
        return list(by_mount.values())

    def pull_image(self, request: PullRequest) -> Answer:
        """Pull through the first backend that can; answer as ImageStatus would.

        With no pulling backend configured, an image already present is its
        own pull (kubelet's ``Always`` policy keeps working on read-only
        nodes); an absent one is FAILED_PRECONDITION.
        """
        ref = request.ref
        for handle in self.backends:
            if isinstance(handle.backend, Puller):
                record = handle.backend.pull_image(request)
                answer = self.image_status(_id_ref(record.id))
                return answer if answer is not None else self._answer(record, handle.name)
        answer = self.image_status(ref)
        if answer is not None:
            return answer
        raise NotSupported(
            f"cannot pull {ref}: no configured backend pulls images "
            f"(backends: {', '.join(h.name for h in self.backends)})"
        )

    # -- internals -------------------------------------------------------

    def _first(self, ref: Reference) -> Answer | None:
        backends = self.backends
        for i, handle in enumerate(backends):
            record = self._call(handle, "get_image", lambda b: b.get_image(ref))
            if record is not None:
                if len(backends) > 1:
                    record = self._complete(record, i)
                return self._answer(record, handle.name)
        return None

    def _complete(self, record: ImageRecord, answered: int) -> ImageRecord:
        """The image as every backend knows it, merged in configured order.

        The order does not depend on which backend knew the name asked for,
        so the image reads the same whichever of its names is asked.
        """
        id_ref = _id_ref(record.id)
        merged: ImageRecord | None = None
        for i, handle in enumerate(self.backends):
            if i == answered:
                other: ImageRecord | None = record
            else:
                other = self._call(handle, "get_image", lambda b: b.get_image(id_ref))
            if other is not None:
                merged = other if merged is None else merge_records(merged, other)
        return merged if merged is not None else record

    def _by_prefix(self, ref: Reference) -> Answer | None:
        ids: set[str] = set()
        for handle in self.backends:
            found = self._call(
                handle, "match_id_prefix", lambda b: b.match_id_prefix(ref.id_prefix)
            )
            ids.update(found or ())
            if len(ids) > 1:
                raise AmbiguousReference(
                    f"image ID prefix {ref.id_prefix!r} is ambiguous: it matches more than "
                    "one image; give more characters or the full ID"
                )
        if not ids:
            return None
        return self._first(_id_ref(ids.pop()))

    def _answer(self, record: ImageRecord, backend: str) -> Answer:
        """The Answer for a record, made once per (record, backend) and kept."""
        answer: Answer | None = record.cache.get(backend)
        if answer is None:
            pinned = bool(self.pinned) and self.pinned.is_pinned(record)
            answer = Answer(record, backend, pinned)
            record.cache[backend] = answer
        return answer

    def _call(self, handle: BackendHandle, what: str, fn: Callable[[Backend], T]) -> T | None:
        try:
            return fn(handle.backend)
        except CrishimError:
            raise
        except Exception as exc:
            if self.fail_on_backend_error:
                raise BackendError(handle.name, f"{what} failed: {exc!r}") from exc
            log.exception("backend %s: %s failed; asking the next backend", handle.name, what)
            return None


def _id_ref(image_id: str) -> Reference:
    return Reference(raw=image_id, kind=RefKind.ID, digest=image_id)
