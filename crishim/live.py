"""The catalog the service asks: the current one, replaced whole on reload.

The servicer holds a :class:`LiveCatalog` for the life of the process; a
reload builds a new :class:`~crishim.catalog.Catalog` aside, starts it and
:meth:`LiveCatalog.swap` puts it in place. A call runs entirely on the
catalog that was current when it began, and each generation counts its
calls in flight, so the previous catalog is closed only once the calls it
was answering have finished (:meth:`LiveCatalog.drain`).

At ``logging.level: debug`` every call leaves one line: the CRI method,
the reference, what happened (the backend that answered, a miss, a filter
that hid the image, an error) and how long the catalog took. At info and
above nothing is logged per call and the check costs one cached level test.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from crishim.catalog import Catalog
from crishim.logs import HIDDEN_BY
from crishim.model import Answer, FilesystemUsage
from crishim.reference import Reference
from crishim.types import PullRequest

log = logging.getLogger(__name__)
T = TypeVar("T")


class Generation:
    """One catalog and the calls in flight on it."""

    __slots__ = ("active", "catalog", "number")

    def __init__(self, catalog: Catalog, number: int) -> None:
        self.catalog = catalog
        self.number = number
        self.active = 0


def _short(image_id: str) -> str:
    return image_id.partition(":")[2][:12] or image_id


def _what(method: str, subject: object) -> str:
    return f"{method} {subject}" if subject else method


def _found(answer: Answer | None) -> str:
    if answer is not None:
        return f"hit {answer.backend} ({_short(answer.record.id)})"
    hidden = HIDDEN_BY.get()
    return f"hidden by {', '.join(hidden)}" if hidden else "miss"


class LiveCatalog:
    """Offers the catalog's call methods, each on the current generation."""

    def __init__(self, catalog: Catalog) -> None:
        self._lock = threading.Condition(threading.Lock())
        self._current = Generation(catalog, 0)

    @property
    def current(self) -> Catalog:
        return self._current.catalog

    @property
    def current_generation(self) -> Generation:
        return self._current

    # -- reload ----------------------------------------------------------

    def swap(self, catalog: Catalog) -> Generation:
        """Make ``catalog`` current; returns the generation it replaces."""
        with self._lock:
            old = self._current
            self._current = Generation(catalog, old.number + 1)
            self._lock.notify_all()
            return old

    def in_flight(self, generation: Generation) -> int:
        with self._lock:
            return generation.active

    def drain(self, generation: Generation, timeout: float) -> bool:
        """Wait until no call runs on ``generation``; False when some still do."""
        with self._lock:
            return self._lock.wait_for(lambda: generation.active == 0, timeout)

    # -- calls -----------------------------------------------------------

    def route(self, handler: str) -> LiveRoute:
        """The calls of runtime handler ``handler``; each resolves the route on
        the generation current when it runs (an unknown handler is
        INVALID_ARGUMENT then, as :meth:`Catalog.route` says)."""
        return LiveRoute(self, handler)

    def image_status(self, ref: Reference) -> Answer | None:
        return self.route("").image_status(ref)

    def list_images(self, ref: Reference | None = None) -> list[Answer]:
        return self.route("").list_images(ref)

    def remove_image(self, ref: Reference) -> Answer | None:
        return self.route("").remove_image(ref)

    def list_images_every_handler(self) -> list[Answer]:
        return self._run(
            "ListImages",
            "",
            lambda c: c.list_images_every_handler(),
            lambda a: f"{len(a)} images",
        )

    def pull_image(self, request: PullRequest) -> Answer:
        return self._run(
            "PullImage",
            request.ref,
            lambda c: c.pull_image(request),
            lambda a: f"pulled {_short(a.record.id)}, answered by {a.backend}",
        )

    def pulling_backend(self, handler: str = "") -> str:
        return self._current.catalog.pulling_backend(handler)

    def filesystems(self) -> tuple[list[FilesystemUsage], list[FilesystemUsage]]:
        return self._run(
            "ImageFsInfo",
            "",
            lambda c: c.filesystems(),
            lambda u: f"{len(u[0])} image and {len(u[1])} container filesystems",
        )

    def filesystem_usage(self) -> list[FilesystemUsage]:
        return self.filesystems()[0]

    def _run(
        self,
        method: str,
        subject: object,
        call: Callable[[Catalog], T],
        describe: Callable[[T], str],
    ) -> T:
        with self._lock:
            generation = self._current
            generation.active += 1
        try:
            if not log.isEnabledFor(logging.DEBUG):
                return call(generation.catalog)
            return self._logged(method, subject, call, describe, generation.catalog)
        finally:
            with self._lock:
                generation.active -= 1
                if generation.active == 0 and generation is not self._current:
                    self._lock.notify_all()

    @staticmethod
    def _logged(
        method: str,
        subject: object,
        call: Callable[[Catalog], T],
        describe: Callable[[T], str],
        catalog: Catalog,
    ) -> T:
        token = HIDDEN_BY.set([])
        started = time.perf_counter()
        try:
            result = call(catalog)
        except Exception as exc:
            took = (time.perf_counter() - started) * 1000
            log.debug("%s: failed: %s (%.2fms)", _what(method, subject), exc, took)
            raise
        else:
            took = (time.perf_counter() - started) * 1000
            log.debug("%s: %s (%.2fms)", _what(method, subject), describe(result), took)
            return result
        finally:
            HIDDEN_BY.reset(token)


class LiveRoute:
    """One runtime handler's calls on a :class:`LiveCatalog`."""

    __slots__ = ("_handler", "_live")

    def __init__(self, live: LiveCatalog, handler: str) -> None:
        self._live = live
        self._handler = handler

    def _subject(self, ref: object) -> str:
        return f"{ref} (runtime handler {self._handler})" if self._handler else str(ref or "")

    def image_status(self, ref: Reference) -> Answer | None:
        handler = self._handler
        return self._live._run(
            "ImageStatus", self._subject(ref), lambda c: c.route(handler).image_status(ref), _found
        )

    def list_images(self, ref: Reference | None = None) -> list[Answer]:
        handler = self._handler
        return self._live._run(
            "ListImages",
            self._subject(ref),
            lambda c: c.route(handler).list_images(ref),
            lambda a: f"{len(a)} images",
        )

    def remove_image(self, ref: Reference) -> Answer | None:
        handler = self._handler
        return self._live._run(
            "RemoveImage",
            self._subject(ref),
            lambda c: c.route(handler).remove_image(ref),
            lambda a: "miss" if a is None else f"removed from {a.backend} ({_short(a.record.id)})",
        )
