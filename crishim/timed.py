"""Calling a plugin with a time limit, on a bounded pool of its own.

A backend with a ``timeout`` and every pull policy are called through a
:class:`TimedCaller`: a plugin that hangs holds one of its own workers,
never the server's threads past its timeout.
"""

from __future__ import annotations

import contextvars
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


class BackendTimeout(TimeoutError):
    """A backend did not answer within its ``timeout``."""


class BackendBusy(RuntimeError):
    """Every worker of a backend with a ``timeout`` is held by a call still running."""


_Task = tuple[Future[Any], contextvars.Context, Callable[[Any], Any], Any]
Target = TypeVar("Target")


class TimedCaller:
    """Calls one backend (or pull policy) on its own bounded pool of daemon threads.

    The caller waits at most ``timeout`` seconds for the answer. A call past
    its timeout keeps its worker until the backend returns; when every
    worker is held, the next call fails at once (BackendBusy) instead of
    queueing behind a hung backend. So a hung plugin holds a server thread
    for at most ``timeout``, and at most ``workers`` threads of its own.
    """

    def __init__(self, name: str, timeout: float, workers: int) -> None:
        self.name = name
        self.timeout = timeout
        self.workers = workers
        self._slots = threading.BoundedSemaphore(workers)
        self._tasks: queue.SimpleQueue[_Task | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def call(self, fn: Callable[[Target], T], backend: Target) -> T:
        if not self._slots.acquire(blocking=False):
            raise BackendBusy(
                f"all {self.workers} workers are held by calls that have not returned "
                f"within the {self.timeout}s timeout"
            )
        if not self._threads:
            self._start()
        future: Future[T] = Future()
        self._tasks.put((future, contextvars.copy_context(), fn, backend))
        try:
            return future.result(self.timeout)
        except TimeoutError:
            if not future.done():
                raise BackendTimeout(f"no answer within {self.timeout}s") from None
        return future.result(0)  # it finished just then, or raised TimeoutError itself

    def close(self) -> None:
        """Let idle workers exit; a worker stuck in a hung call is a daemon."""
        for _ in self._threads:
            self._tasks.put(None)

    def _start(self) -> None:
        with self._lock:
            while len(self._threads) < self.workers:
                thread = threading.Thread(
                    target=self._work,
                    name=f"backend-{self.name}-{len(self._threads)}",
                    daemon=True,
                )
                thread.start()
                self._threads.append(thread)

    def _work(self) -> None:
        while (task := self._tasks.get()) is not None:
            future, context, fn, backend = task
            try:
                if future.set_running_or_notify_cancel():
                    try:
                        result = context.run(fn, backend)
                    except BaseException as exc:
                        future.set_exception(exc)
                    else:
                        future.set_result(result)
            finally:
                self._slots.release()
