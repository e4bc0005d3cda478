"""The one place that calls backends: ordering, first answer, merging.

The catalog asks backends in the configured order; the first that knows an
image answers, and its answer is completed with the names other backends
give the same image ID. A backend that raises costs its own answer: the
error is logged with the backend's name and the next backend is asked. A
backend with a ``timeout`` is called on its own bounded worker pool and
given up on past it; the others are called directly.

Filters judge every record a backend returns, in the configured order; a
hidden record is absent for ImageStatus and RemoveImage and left out of
lists unless its verdict says ``listed``. The verdict is computed once per
record and kept with it; with no filters configured nothing is judged.

Pull policies (:mod:`crishim.policies`) judge every pull before the
pulling backend is asked, and again once the pull has resolved its image.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from operator import methodcaller
from typing import TYPE_CHECKING, Any, TypeVar

from crishim import logs
from crishim.errors import (
    AmbiguousReference,
    BackendError,
    CrishimError,
    InvalidRequest,
    NotSupported,
)
from crishim.index import merge_records
from crishim.model import Answer, FilesystemUsage, ImageRecord
from crishim.policies import PolicyChain, image_of_record
from crishim.reference import Reference, RefKind
from crishim.timed import BackendBusy, BackendTimeout, TimedCaller
from crishim.types import (
    VISIBLE,
    Backend,
    Filter,
    HandlerAware,
    Puller,
    PullRequest,
    ResolvedImage,
    Verdict,
)

__all__ = ["BackendBusy", "BackendHandle", "BackendTimeout", "Catalog", "TimedCaller"]

if TYPE_CHECKING:
    from crishim.tracing import PluginTelemetry

log = logging.getLogger(__name__)
T = TypeVar("T")


def _records(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(r, ImageRecord) for r in value)


#: What each Backend call must answer; anything else costs the backend's answer.
_SHAPES: dict[str, Callable[[Any], bool]] = {
    "get_image": lambda r: r is None or isinstance(r, ImageRecord),
    "match_id_prefix": lambda r: isinstance(r, list | tuple) and all(isinstance(i, str) for i in r),
    "list_images": _records,
    "filesystem_usage": lambda r: (
        isinstance(r, list) and all(isinstance(u, FilesystemUsage) for u in r)
    ),
}


def _shape_of(value: object) -> str:
    if isinstance(value, list | tuple) and value:
        return f"a {type(value).__name__} holding {type(value[0]).__name__}"
    return f"a {type(value).__name__}"


@dataclass(frozen=True)
class BackendHandle:
    """A configured backend instance: its config name, its type, the object."""

    name: str
    type: str
    backend: Backend
    #: Seconds a call may take (lookups, lists, usage); None: called directly.
    timeout: float | None = None
    #: The CRI runtime handlers the backend serves (``""``: the default one).
    runtime_handlers: tuple[str, ...] = ("",)


@dataclass(frozen=True)
class FilterHandle:
    """A configured filter instance: its config name, its type, the object."""

    name: str
    type: str
    filter: Filter


class FilterChain:
    """The configured filters, in order; one verdict per record, kept with it.

    Records are immutable, so a record is judged the first time it is seen
    and the verdict stored in ``record.cache`` under a key private to this
    chain. The first filter that hides a record decides. A filter that
    raises (or returns something else than a Verdict) hides the record: it
    could not be shown to be fit for the CRI; the error is logged once.
    """

    def __init__(
        self, filters: Sequence[FilterHandle], telemetry: PluginTelemetry | None = None
    ) -> None:
        self.filters = tuple(filters)
        self.telemetry = telemetry
        self._key = object()

    def verdict(self, record: ImageRecord) -> Verdict:
        verdict: Verdict | None = record.cache.get(self._key)
        if verdict is None:
            verdict = record.cache[self._key] = self._judge(record)
        return verdict

    def hides(self, record: ImageRecord, backend: str, asked: object) -> bool:
        """True when ``record`` is hidden; says why at debug level."""
        verdict: Verdict | None = record.cache.get(self._key)
        if verdict is None:
            verdict = self.verdict(record)
        if verdict.hidden:
            logs.note_hidden(verdict.filter)
            log.debug(
                "image %s (asked as %s) from backend %s is hidden by filter %s: %s",
                record.id,
                asked,
                backend,
                verdict.filter,
                verdict.reason,
            )
        return verdict.hidden

    def _judge(self, record: ImageRecord) -> Verdict:
        for handle in self.filters:
            check: Callable[[ImageRecord], Verdict] = handle.filter.check
            if self.telemetry is not None:
                check = self.telemetry.wrap(handle.name, handle.type, "check", check, kind="filter")
            try:
                verdict = check(record)
                if not isinstance(verdict, Verdict):
                    raise TypeError(f"check returned {type(verdict).__name__}, not a Verdict")
            except Exception as exc:
                log.exception(
                    "filter %s failed on image %s; hiding the image", handle.name, record.id
                )
                return Verdict(True, f"filter {handle.name} failed: {exc!r}", filter=handle.name)
            if verdict.hidden:
                return replace(verdict, filter=handle.name)
        return VISIBLE


class PinnedPolicy:
    """Decides ``Image.pinned`` from exact names and ``prefix*`` patterns."""

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        self.exact = frozenset(p for p in patterns if not p.endswith("*"))
        self.prefixes = tuple(p[:-1] for p in patterns if p.endswith("*"))

    def __bool__(self) -> bool:
        return bool(self.exact or self.prefixes)

    def is_pinned(self, record: ImageRecord) -> bool:
        return self.matches((*record.repo_tags, *record.repo_digests))

    def matches(self, names: Iterable[str]) -> bool:
        """Whether any of these normalised names is pinned."""
        return any(name in self.exact or name.startswith(self.prefixes) for name in names)


class Catalog:
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
        self._complaints: set[tuple[str, str, str]] = set()
        self.pinned = pinned or PinnedPolicy()
        self.fail_on_backend_error = fail_on_backend_error
        #: A child span and an outcome count per plugin call; None: neither (no cost).
        self.telemetry = telemetry
        #: The filters, in order; None when there are none (nothing is judged).
        self.filters = FilterChain(filters, telemetry) if filters else None
        #: The pull policies; None when there are none (every pull is allowed).
        self.policies = policies if policies is not None and policies.policies else None
        #: A bounded worker pool per backend with a ``timeout``.
        self._timed = {
            h.name: TimedCaller(h.name, h.timeout, timeout_workers)
            for h in self.backends
            if h.timeout is not None
        }
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
                if self.filters is not None and not self._listable(record, handle.name):
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
                        handle.name, f"pull_image answered {_shape_of(record)}, not an ImageRecord"
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

    def _call(self, handle: BackendHandle, what: str, fn: Callable[[Backend], T]) -> T | None:
        if self.telemetry is not None:
            fn = self.telemetry.wrap(handle.name, handle.type, what, fn)
        try:
            result = fn(handle.backend) if handle.timeout is None else self._timed_call(handle, fn)
        except CrishimError:
            raise
        except Exception as exc:
            if self.fail_on_backend_error:
                raise BackendError(handle.name, f"{what} failed: {exc!r}") from exc
            self._complain(handle, what, f"failed: {exc!r}", exc)
            return None
        if _SHAPES[what](result):
            return result
        # a wrong answer costs this backend's answer, never the call
        problem = f"answered {_shape_of(result)}, not what {what} returns"
        if self.fail_on_backend_error:
            raise BackendError(handle.name, f"{what} {problem}")
        self._complain(handle, what, problem)
        return None

    def _complain(
        self, handle: BackendHandle, what: str, problem: str, exc: Exception | None = None
    ) -> None:
        """Log a backend's failure once per (backend, call, problem); then at debug level.

        A backend failing on every call must not grow the log with every call.
        """
        key = (handle.name, what, problem)
        first = key not in self._complaints
        if first and len(self._complaints) < 1000:
            self._complaints.add(key)
        log.log(
            logging.ERROR if first else logging.DEBUG,
            "backend %s: %s %s; asking the next backend%s",
            handle.name,
            what,
            problem,
            "" if first else " (logged before)",
            exc_info=exc if first else None,
        )

    def _timed_call(self, handle: BackendHandle, fn: Callable[[Backend], T]) -> T:
        """``fn(handle.backend)`` on the backend's pool, waiting at most its timeout."""
        return self._timed[handle.name].call(fn, handle.backend)

    def _hidden(self, record: ImageRecord, backend: str, asked: object) -> bool:
        return self.filters is not None and self.filters.hides(record, backend, asked)

    def _listable(self, record: ImageRecord, backend: str) -> bool:
        """Whether ListImages/StreamImages show ``record`` (filters configured)."""
        assert self.filters is not None
        verdict = self.filters.verdict(record)
        if verdict.hidden and not verdict.listed:
            log.debug(
                "list: image %s from backend %s is hidden by filter %s: %s",
                record.id,
                backend,
                verdict.filter,
                verdict.reason,
            )
            return False
        return True

    def _visible_in(self, handle: BackendHandle, image_id: str) -> bool:
        """Whether the backend's image of this ID passes the filters."""
        assert self.filters is not None
        record = self._call(handle, "get_image", lambda b: b.get_image(_id_ref(image_id)))
        return record is not None and not self.filters.verdict(record).hidden

    def _traced(self, handle: BackendHandle, what: str, fn: Callable[[Backend], T]) -> T:
        """``fn(handle.backend)`` in a plugin span; errors propagate (writes, pulls)."""
        if self.telemetry is not None:
            fn = self.telemetry.wrap(handle.name, handle.type, what, fn)
        return fn(handle.backend)


def _id_ref(image_id: str) -> Reference:
    return Reference(raw=image_id, kind=RefKind.ID, digest=image_id)
