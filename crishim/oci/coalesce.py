"""Background work that coalesces: what is asked for while it waits or runs is done once more.

A backend asks for work from any thread (write a snapshot, measure the
store, apply the changes events announced) and goes on at once;
:class:`Coalesced` runs it on a thread of its own, one run at a time.
Requests made while a run waits or runs are merged into the next run
(the latest value wins, or ``merge`` combines them), so a burst of
changes costs one or two runs, never one per change. The thread exists
only while there is work; once the backend's stop event is set no new run
starts, and :meth:`Coalesced.flush` runs what is still pending in the
caller's thread (a snapshot at close).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class Coalesced(Generic[T]):
    """``work(value)`` in the background, one run at a time, requests merged.

    ``delay``: seconds a run waits before it takes what was asked (a burst
    settles first). ``stop``: the owner's stop event (a run waits on it).
    A run that raises is logged; the next request runs again.
    """

    def __init__(
        self,
        name: str,
        work: Callable[[T], object],
        *,
        merge: Callable[[T, T], T] | None = None,
        delay: float = 0.0,
        stop: threading.Event | None = None,
    ) -> None:
        self.name = name
        self._work = work
        self._merge = merge
        self._delay = delay
        self._stop = stop if stop is not None else threading.Event()
        self._lock = threading.Lock()
        self._run_lock = threading.Lock()  # the thread's runs and flush() never overlap
        self._pending: list[T] = []  # nothing, or the one value the next run takes
        self._thread: threading.Thread | None = None

    def request(self, value: T) -> None:
        """Have ``work`` run with ``value`` (merged into what is pending) soon."""
        with self._lock:
            if not self._pending:
                self._pending.append(value)
            elif self._merge is not None:
                self._pending[0] = self._merge(self._pending[0], value)
            else:
                self._pending[0] = value
            if self._thread is not None:
                return
            self._thread = thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        thread.start()

    def _loop(self) -> None:
        try:
            while True:
                if self._delay:
                    self._stop.wait(self._delay)
                with self._lock:
                    if not self._pending or self._stop.is_set():
                        self._thread = None
                        return
                    value = self._pending.pop()
                self._run(value)
        except BaseException:
            with self._lock:
                self._thread = None
            raise

    def _run(self, value: T) -> None:
        with self._run_lock:
            try:
                self._work(value)
            except Exception:
                log.exception("%s failed", self.name)

    def flush(self) -> None:
        """Run what is pending now, in this thread (after the thread's current run)."""
        with self._lock:
            if not self._pending:
                return
            value = self._pending.pop()
        self._run(value)

    def join(self, timeout: float) -> None:
        """Wait (at most ``timeout`` seconds) for the thread, once ``stop`` is set."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
