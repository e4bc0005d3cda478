"""Calling one backend: fault isolation, answer shapes, time limits, a span per call.

A backend that raises costs its own answer, never the call: the error is
logged once per (backend, call, problem) with the backend's name, and the
catalog asks the next backend (``fail_on_backend_error`` makes it the
call's error instead). An answer of the wrong shape (a backend returning a
dict where records are due) is treated the same way. A backend with a
``timeout`` is called on its own bounded worker pool (:mod:`crishim.timed`)
and given up on past it; the others are called directly, on the caller's
thread. With telemetry on, each call is a child span and an outcome count
(:class:`crishim.telemetry.spans.PluginTelemetry`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from crishim.errors import BackendError, CrishimError
from crishim.model import FilesystemUsage, ImageRecord
from crishim.timed import TimedCaller
from crishim.types import Backend

if TYPE_CHECKING:
    from crishim.telemetry.spans import PluginTelemetry

__all__ = ["BackendCalls", "BackendHandle", "shape_of"]

#: The catalog's logger: a backend's failures are part of its story.
log = logging.getLogger("crishim.catalog")
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


def shape_of(value: object) -> str:
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


class BackendCalls:
    """The catalog's way of calling its backends (:class:`crishim.catalog.Catalog` is one)."""

    def __init__(
        self,
        backends: Sequence[BackendHandle],
        telemetry: PluginTelemetry | None,
        fail_on_backend_error: bool,
        timeout_workers: int,
    ) -> None:
        self._complaints: set[tuple[str, str, str]] = set()
        self.fail_on_backend_error = fail_on_backend_error
        #: A child span and an outcome count per plugin call; None: neither (no cost).
        self.telemetry = telemetry
        #: A bounded worker pool per backend with a ``timeout``.
        self._timed = {
            h.name: TimedCaller(h.name, h.timeout, timeout_workers)
            for h in backends
            if h.timeout is not None
        }

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
        problem = f"answered {shape_of(result)}, not what {what} returns"
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

    def _traced(self, handle: BackendHandle, what: str, fn: Callable[[Backend], T]) -> T:
        """``fn(handle.backend)`` in a plugin span; errors propagate (writes, pulls)."""
        if self.telemetry is not None:
            fn = self.telemetry.wrap(handle.name, handle.type, what, fn)
        return fn(handle.backend)
