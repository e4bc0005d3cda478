"""The serving process's own machinery: signals, bounded steps, and ending the process.

:mod:`crishim.daemon` steers; this is what it steers with. Signal handlers
only set events (they run on the main thread wherever it was interrupted,
so they take no lock); whatever may block runs on a daemon thread with a
bound (:func:`bounded`); and the process ends with ``os._exit``, because
gRPC's worker threads (a call stuck in a plugin holds one) would otherwise
be joined at interpreter exit, for ever.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

log = logging.getLogger("crishim")

#: A stop that had to abandon work it could not bound (the timer fired, or a
#: second stop signal came).
EXIT_FORCED = 3


def process_started() -> float:
    """When this process started, on the ``time.monotonic()`` clock when Linux says.

    "ready in" then counts the interpreter's start and imports too, which
    are most of a small start-up; elsewhere, from when ``serve`` began.
    """
    now = time.monotonic()
    try:
        fields = Path("/proc/self/stat").read_text().rpartition(")")[2].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # seconds after boot
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - started
    except (OSError, ValueError, IndexError):
        return now
    return now - max(age, 0.0)


#: Seconds the main thread blocks at most before it runs pending signal handlers.
SIGNAL_SLICE = 0.2


def wait_in_main(event: threading.Event, timeout: float | None = None) -> bool:
    """``event.wait(timeout)`` for the main thread, which runs signal handlers meanwhile.

    Python runs a handler in the main thread when it next executes bytecode;
    Linux delivers a process's signal to any thread that does not block it,
    and when that is a gRPC or plugin thread, a main thread blocked in one
    long wait would run the handler only once the wait ends (a second
    SIGTERM then waits out the grace period). Waiting in slices bounds that.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = SIGNAL_SLICE if deadline is None else min(SIGNAL_SLICE, deadline - time.monotonic())
        if event.wait(max(left, 0.0)):
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False


def join_in_main(thread: threading.Thread, timeout: float) -> None:
    """``thread.join(timeout)`` for the main thread: see :func:`wait_in_main`."""
    deadline = time.monotonic() + timeout
    while thread.is_alive() and time.monotonic() < deadline:
        thread.join(min(SIGNAL_SLICE, max(deadline - time.monotonic(), 0.0)))


def bounded(what: str, fn: Callable[[], object], timeout: float) -> bool:
    """Run ``fn`` on a daemon thread, waiting at most ``timeout`` seconds.

    False (and a warning) when it did not finish: the thread is left to
    itself, and being a daemon it cannot keep the process alive.
    """
    done = threading.Event()

    def run() -> None:
        try:
            fn()
        except Exception:
            log.exception("%s failed", what)
        finally:
            done.set()

    threading.Thread(target=run, name=f"crishim-{what.replace(' ', '-')}", daemon=True).start()
    if wait_in_main(done, max(timeout, 0.0)):
        return True
    log.warning("%s did not finish within %.1fs; going on without it", what, timeout)
    return False


def lingering_threads() -> list[threading.Thread]:
    """Threads still running besides the main one (gRPC workers, plugins' own).

    Daemon or not, they can hold the interpreter's exit: worker threads of
    a ThreadPoolExecutor (gRPC's among them) are joined at exit whatever
    their daemon flag.
    """
    main = threading.main_thread()
    return [t for t in threading.enumerate() if t is not main and t.is_alive()]


def exit_now(code: int) -> None:
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class Signals:
    """SIGTERM/SIGINT ask for a stop, SIGHUP for a reload; the main loop acts.

    The handlers only set events (a second stop signal exits at once,
    writing its line without a lock): a handler runs in the main thread
    wherever it was interrupted, possibly inside the logging module or a
    thread start, so it takes no lock it could already hold. A watcher
    thread logs the stop and calls ``on_stop`` (which arms the stop bound).
    """

    def __init__(self, on_stop: Callable[[str], None]) -> None:
        self.stop = threading.Event()
        self.reload = threading.Event()
        self.wake = threading.Event()
        self.stop_reason = ""
        self._on_stop = on_stop
        self._previous: dict[int, Any] = {}
        self._restored = False
        self._wake_watcher = threading.Event()

    def install(self) -> None:
        for sig, handler in (
            (signal.SIGTERM, self._stop),
            (signal.SIGINT, self._stop),
            (signal.SIGHUP, self._reload),
        ):
            self._previous[sig] = signal.signal(sig, handler)
        threading.Thread(target=self._watch, name="crishim-stop-watch", daemon=True).start()

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._restored = True
        self._wake_watcher.set()

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.stop.is_set():
            _say_unlocked(logging.WARNING, f"received {name} again: exiting now")
            os._exit(EXIT_FORCED)
        self.stop_reason = name
        self.stop.set()
        self.wake.set()
        self._wake_watcher.set()

    def _reload(self, signum: int, frame: FrameType | None) -> None:
        self.reload.set()
        self.wake.set()

    def _watch(self) -> None:
        self._wake_watcher.wait()
        if self.stop.is_set():
            log.info("received %s: stopping", self.stop_reason)
            self._on_stop(self.stop_reason)


def _say_unlocked(level: int, message: str) -> None:
    """One log line written straight to stderr, formatted as the log's lines are
    but taking no lock (for signal handlers)."""
    record = log.makeRecord(log.name, level, __file__, 0, message, (), None)
    formatter = next(
        (h.formatter for h in logging.getLogger().handlers if h.formatter is not None), None
    )
    text = (formatter or logging.Formatter()).format(record)
    with contextlib.suppress(OSError):
        os.write(2, text.encode(errors="replace") + b"\n")
