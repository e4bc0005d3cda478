"""The one place that calls backends: routing, ordering, first answer, merging.

A call is routed by runtime handler, then the handler's backends are asked
in the configured order: the first that knows an image answers, and its
answer is completed with the names other backends give the same image ID;
ListImages merges by image ID. How one backend is called (a fault costs its
own answer, shapes, timeouts, spans) is :mod:`crishim.backend_calls`'s;
filters are :mod:`crishim.filtering`'s (a hidden record is absent for
ImageStatus and RemoveImage, left out of lists unless ``listed``), pins
:mod:`crishim.pinning`'s, and pull policies :mod:`crishim.policies`'s (asked
before the pulling backend, and again once the pull has resolved its image).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import replace
from operator import methodcaller
from typing import TYPE_CHECKING, TypeVar

from crishim.backend_calls import BackendCalls, BackendHandle, shape_of
from crishim.errors import (
    AmbiguousReference,
    BackendError,
    CrishimError,
    InvalidRequest,
    NotSupported,
)
from crishim.filtering import FilterChain, FilterHandle
from crishim.index import merge_records
from crishim.model import Answer, FilesystemUsage, ImageRecord
from crishim.pinning import PinnedPolicy
from crishim.policies import PolicyChain, image_of_record
from crishim.reference import Reference, RefKind
from crishim.timed import BackendBusy, BackendTimeout, TimedCaller
from crishim.types import HandlerAware, Puller, PullRequest, ResolvedImage

__all__ = [
    "BackendBusy",
    "BackendHandle",
    "BackendTimeout",
    "Catalog",
    "FilterChain",
    "FilterHandle",
    "PinnedPolicy",
    "TimedCaller",
]

if TYPE_CHECKING:
    from crishim.telemetry.spans import PluginTelemetry

log = logging.getLogger(__name__)
T = TypeVar("T")


class Catalog(BackendCalls):
    """Routes every CRI image call among the configured backends."""

    def __init__(
        self,
        backends: Sequence[BackendHandle],
        pinned: PinnedPolicy | None = None,
        *,
        fail_on_backend_error: bool = False,
        telemetry: PluginTelemetry | None = None,
        filters: Sequence[FilterHandle] = (),
        policies: PolicyChain | None = None,
        timeout_workers: int = 4,
    ) -> None:
        self.backends = tuple(backends)
        #: Every configured backend, started or not (closed at the end).
        self._all = self.backends
        #: Backends whose start failed, with the reason; left out of routing.
        self.failed: dict[str, str] = {}
        super().__init__(self.backends, telemetry, fail_on_backend_error, timeout_workers)
        self.pinned = pinned or PinnedPolicy()
        #: The filters, in order; None when there are none (nothing is judged).
        self.filters = FilterChain(filters, telemetry) if filters else None
        #: The pull policies; None when there are none (every pull is allowed).
        self.policies = policies if policies is not None and policies.policies else None
        #: The runtime handler this catalog answers for: ``""`` here; a route
        #: (:meth:`route`) answers for its own.
        self.runtime_handler = ""
        self._routes: dict[str, Catalog] = {}
        #: The ``backends`` the routes were made for (made again when it changes).
        self._routed: tuple[BackendHandle, ...] | None = None

    # -- lifecycle -------------------------------------------------------

    def start(self) -> None:
        """Start every backend; one that fails costs its own answers, not the others'.

        A backend whose ``start`` raises is logged and left out of routing
        (``self.failed`` says why). Only when every backend failed does the
        first failure end the start-up: there would be nothing to serve.
        """
        self._all = self.backends
        started: list[BackendHandle] = []
        first: Exception | None = None
        for handle in self.backends:
            try:
                handle.backend.start()
            except Exception as exc:
                first = first or exc
                self.failed[handle.name] = str(exc) or type(exc).__name__
                log.error(
                    "backend %s (type %s) failed to start and is left out: %s",
                    handle.name,
                    handle.type,
                    self.failed[handle.name],
                )
                continue
            started.append(handle)
        if not started and first is not None:
            raise first
        self.backends = tuple(started)

    def close(self) -> None:
        for handle in reversed(self._all):
            try:
                handle.backend.close()
            except Exception:
                log.exception("backend %s failed to close", handle.name)
        for caller in self._timed.values():
            caller.close()
        if self.policies is not None:
            self.policies.close()

    # -- runtime handlers --------------------------------------------------

    def _make_routes(self) -> dict[str, Catalog]:
        """One catalog per runtime handler over the backends serving it, in order.

        When every backend serves the default handler, this catalog is that
        handler's route. A route shares everything else (filters, pins,
        telemetry, worker pools) with this catalog; only the backends it asks
        differ. A handler-aware backend is asked for its view of the handler.
        """
        by_handler: dict[str, list[BackendHandle]] = {}
        for handle in self.backends:
            for handler in handle.runtime_handlers:
                view = handle
                if handler and isinstance(handle.backend, HandlerAware):
                    view = replace(handle, backend=handle.backend.for_runtime_handler(handler))
                by_handler.setdefault(handler, []).append(view)
        if not by_handler:
            return {"": self}
        routes: dict[str, Catalog] = {}
        for handler, handles in by_handler.items():
            if handler == "" and len(handles) == len(self.backends):
                routes[handler] = self
                continue
            route = copy.copy(self)
            route.backends = tuple(handles)
            route.runtime_handler = handler
            route._routes, route._routed = {handler: route}, route.backends
            routes[handler] = route
        return routes

    def _current_routes(self) -> dict[str, Catalog]:
        """The routes for the backends as they are now (start-up may leave some out)."""
        if self._routed is not self.backends:
            self._routes = self._make_routes()
            self._routed = self.backends
        return self._routes

    @property
    def runtime_handlers(self) -> tuple[str, ...]:
        """Every runtime handler some backend serves, in the order backends name them."""
        return tuple(self._current_routes())

    def route(self, handler: str) -> Catalog:
        """The catalog answering calls for ``handler`` (ImageSpec's ``runtime_handler``).

        A handler no configured backend serves is INVALID_ARGUMENT (the CRI:
        an unknown handler is rejected), naming the known ones.
        """
        routes = self._current_routes()
        route = routes.get(handler)
        if route is None:
            known = ", ".join(repr(h) for h in routes) or "none"
            shown = handler if len(handler) <= 80 else handler[:77] + "..."
            raise InvalidRequest(
                f"runtime handler {shown!r} is not served by any configured backend "
                f"(known runtime handlers: {known}; '' is the default)"
            )
        return route

    def list_images_every_handler(self) -> list[Answer]:
        """ListImages without a handler: every image once, by ID, across handlers.

        An image two handlers share (one platform, so one ID) is one entry,
        answered for the first handler that has it, with the names of all.
        """
        routes = self._current_routes()
        if len(routes) == 1 and routes.get(self.runtime_handler) is self:
            return self.list_images()
        merged: dict[str, tuple[Answer, Catalog]] = {}
        for route in routes.values():
            for answer in route.list_images():
                seen = merged.get(answer.record.id)
                if seen is None:
                    merged[answer.record.id] = (answer, route)
                    continue
                first, owner = seen
                record = merge_records(first.record, answer.record)
                if record is not first.record:
                    merged[answer.record.id] = (owner._answer(record, first.backend), owner)
        return [answer for answer, _ in merged.values()]

    def filesystems(self) -> tuple[list[FilesystemUsage], list[FilesystemUsage]]:
        """ImageFsInfo: (image filesystems, container filesystems).

        One image filesystem per mountpoint, summed over the backends that
        share it, the first pulling backend's first (where new images land,
        and the one entry kubelet reads), then in configured order. One
        container filesystem per mountpoint, as the first backend reporting
        it says (they are the runtime's, reported by the backends in front
        of it).
        """
        order = list(self.backends)
        puller = self._first_puller()
        if puller is not None:
            order.remove(puller)
            order.insert(0, puller)
        images: dict[str, FilesystemUsage] = {}
        containers: dict[str, FilesystemUsage] = {}
        for handle in order:
            usages = self._call(handle, "filesystem_usage", lambda b: list(b.filesystem_usage()))
            for usage in usages or ():
                if usage.container:
                    containers.setdefault(usage.mountpoint, usage)
                    continue
                seen = images.get(usage.mountpoint)
                if seen is None:
                    images[usage.mountpoint] = usage
                else:
                    images[usage.mountpoint] = FilesystemUsage(
                        mountpoint=usage.mountpoint,
                        used_bytes=seen.used_bytes + usage.used_bytes,
                        inodes_used=seen.inodes_used + usage.inodes_used,
                        timestamp_ns=max(seen.timestamp_ns, usage.timestamp_ns),
                    )
        return list(images.values()), list(containers.values())

    def _first_puller(self) -> BackendHandle | None:
        """The backend PullImage goes to for the default handler (else for any)."""
        default = self._current_routes().get("")
        for candidates in (default.backends if default is not None else (), self.backends):
            for handle in candidates:
                if isinstance(handle.backend, Puller):
                    return next(h for h in self.backends if h.name == handle.name)
        return None

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
                if self.filters is not None and not self.filters.listable(record, handle.name):
                    continue
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
            if record is not None and not self._hidden(record, handle.name, image_id):
                self._traced(handle, "remove_image", methodcaller("remove_image", record))
        return answer

    def filesystem_usage(self) -> list[FilesystemUsage]:
        """Usage per image filesystem, summed over backends that share one (see filesystems)."""
        return self.filesystems()[0]

    def pulling_backend(self, handler: str = "") -> str:
        """The name of the backend PullImage goes to for ``handler`` ("" when none
        pulls); an unknown handler is INVALID_ARGUMENT, as for the pull itself."""
        route = self.route(handler)
        return next((h.name for h in route.backends if isinstance(h.backend, Puller)), "")

    def pull_image(self, request: PullRequest) -> Answer:
        """Pull through the first backend that can; answer as ImageStatus would.

        With no pulling backend configured, an image already present is its
        own pull (kubelet's ``Always`` policy keeps working on read-only
        nodes); an absent one is FAILED_PRECONDITION. The pull goes down the
        route of ``request.runtime_handler`` (:meth:`route`).
        """
        route = self.route(request.runtime_handler)
        if route is not self:
            return route.pull_image(request)
        ref = request.ref
        policies = self.policies
        admitted: list[ResolvedImage] = []
        if policies is not None:
            policies.check_request(request)
            if policies.checks_images:
                asked = request

                def admit(image: ResolvedImage) -> None:
                    policies.check_image(asked, image)
                    admitted.append(image)

                request = replace(request, admit=admit)
        for handle in self.backends:
            if isinstance(handle.backend, Puller):
                record: ImageRecord = self._traced(
                    handle, "pull_image", methodcaller("pull_image", request)
                )
                if not isinstance(record, ImageRecord):
                    raise BackendError(
                        handle.name, f"pull_image answered {shape_of(record)}, not an ImageRecord"
                    )
                if policies is not None and policies.checks_images and not admitted:
                    # the backend's pull did not go through crishim's puller
                    policies.check_image(request, image_of_record(request, record))
                answer = self.image_status(_id_ref(record.id))
                if answer is None and self.filters is not None:
                    verdict = self.filters.verdict(record)
                    if verdict.hidden:
                        raise NotSupported(
                            f"pulled {ref}, but filter {verdict.filter} hides it: {verdict.reason}"
                        )
                return answer if answer is not None else self._answer(record, handle.name)
        answer = self.image_status(ref)
        if answer is not None:
            if policies is not None and policies.checks_images:
                policies.check_image(request, image_of_record(request, answer.record))
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
                if self.filters is not None and self.filters.hides(record, handle.name, ref):
                    continue
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
                try:
                    other = self._call(handle, "get_image", lambda b: b.get_image(id_ref))
                except CrishimError as exc:
                    # another backend's trouble costs its names, not this answer
                    log.debug(
                        "backend %s: cannot add its names to %s: %s", handle.name, record.id, exc
                    )
                    continue
                if other is not None and self._hidden(other, handle.name, id_ref):
                    continue
            if other is not None:
                merged = other if merged is None else merge_records(merged, other)
        return merged if merged is not None else record

    def _by_prefix(self, ref: Reference) -> Answer | None:
        ids: set[str] = set()
        for handle in self.backends:
            found = self._call(
                handle, "match_id_prefix", lambda b: b.match_id_prefix(ref.id_prefix)
            )
            if found and self.filters is not None:
                found = [i for i in found if self._visible_in(handle, i)]
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
        handler = self.runtime_handler
        key: object = (backend, handler) if handler else backend
        answer: Answer | None = record.cache.get(key)
        if answer is None:
            pinned = record.pinned or (bool(self.pinned) and self.pinned.is_pinned(record))
            answer = Answer(record, backend, pinned, handler)
            record.cache[key] = answer
        return answer

    def _hidden(self, record: ImageRecord, backend: str, asked: object) -> bool:
        return self.filters is not None and self.filters.hides(record, backend, asked)

    def _visible_in(self, handle: BackendHandle, image_id: str) -> bool:
        """Whether the backend's image of this ID passes the filters."""
        assert self.filters is not None
        record = self._call(handle, "get_image", lambda b: b.get_image(_id_ref(image_id)))
        return record is not None and not self.filters.verdict(record).hidden


def _id_ref(image_id: str) -> Reference:
    return Reference(raw=image_id, kind=RefKind.ID, digest=image_id)
