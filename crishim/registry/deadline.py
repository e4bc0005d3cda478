"""A pull's deadline and cancellation, checked between chunks.

Its own module, free of the HTTP stack, because everything that pulls
carries one: the registry session, the puller, archives, containerd's
unpacker.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from crishim.errors import Cancelled, DeadlineExceeded


class Aborted(Exception):
    """Another part of the same pull failed; stop quietly (internal)."""


@dataclass
class Deadline:
    """The caller's deadline and cancellation, checked between chunks."""

    at: float | None
    cancelled: Callable[[], bool]
    what: str
    _abort: threading.Event = field(default_factory=threading.Event)

    def remaining(self) -> float | None:
        return None if self.at is None else self.at - time.monotonic()

    def expired(self) -> bool:
        return self.at is not None and time.monotonic() >= self.at

    def check(self) -> None:
        if self.expired():
            raise DeadlineExceeded(f"{self.what}: the client's deadline ran out")
        if self.cancelled():
            raise Cancelled(f"{self.what}: the client went away")
        if self._abort.is_set():
            raise Aborted

    def abort(self) -> None:
        self._abort.set()

    def bound(self, limit: float) -> float:
        """``limit`` seconds, or less when the deadline is nearer."""
        rem = self.remaining()
        return limit if rem is None else max(0.001, min(limit, rem))
