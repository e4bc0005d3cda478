"""The serving process's own machinery: signals, bounded steps, and ending the process.

:mod:`crishim.daemon` steers; this is what it steers with. Signals are
acted on by a thread of their own (:class:`Signals`), never in a handler;
whatever may block runs on a daemon thread with a bound (:func:`bounded`);
and the process ends with ``os._exit``, because
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
    if done.wait(max(timeout, 0.0)):
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

    No work is done in a signal handler. Python runs handlers on the main
    thread wherever it was interrupted (inside a lock it holds, the logging
    module, an ``Event.wait``), and only once that thread runs bytecode
    again, while Linux may deliver the signal to any thread: a handler that
    set an event could deadlock on the event's own lock, and one that came
    to a gRPC worker thread waited for the main thread to wake. Instead the
    interpreter writes each signal's number to a pipe
    (:func:`signal.set_wakeup_fd`, in C, at once), and the ``crishim-signals``
    thread reads it and acts: it sets the events, logs, calls ``on_stop``
    (which arms the stop bound), and on a second stop signal ends the
    process at once.
    """

    def __init__(self, on_stop: Callable[[str], None]) -> None:
        self.stop = threading.Event()
        self.reload = threading.Event()
        self.wake = threading.Event()
        self.stop_reason = ""
        self._on_stop = on_stop
        self._previous: dict[int, Any] = {}
        self._previous_fd = -1
        self._write_fd = -1

    def install(self) -> None:
        """From the main thread, before any other thread of crishim's runs."""
        read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self._previous[sig] = signal.signal(sig, _noted)
        self._previous_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        threading.Thread(
            target=self._watch, args=(read_fd,), name="crishim-signals", daemon=True
        ).start()

    def restore(self) -> None:
        signal.set_wakeup_fd(self._previous_fd)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        os.close(self._write_fd)  # the watcher reads the end and returns

    def _watch(self, read_fd: int) -> None:
        try:
            while data := os.read(read_fd, 64):
                for signum in data:
                    self._act(signum)
        finally:
            os.close(read_fd)

    def _act(self, signum: int) -> None:
        if signum == signal.SIGHUP:
            self.reload.set()
            self.wake.set()
            return
        if signum not in (signal.SIGTERM, signal.SIGINT):
            return
        name = signal.Signals(signum).name
        if self.stop.is_set():
            # no logging lock: a thread stuck writing a log line must not hold the exit
            _say_unlocked(logging.WARNING, f"received {name} again: exiting now")
            os._exit(EXIT_FORCED)
        self.stop_reason = name
        self.stop.set()
        self.wake.set()
        log.info("received %s: stopping", name)
        self._on_stop(name)


def _noted(signum: int, frame: FrameType | None) -> None:
    """The Python-level handler: nothing; the wakeup pipe carries the signal."""


def _say_unlocked(level: int, message: str) -> None:
    """One log line written straight to stderr, formatted as the log's lines are
    but taking no lock (for the exit a second stop signal forces)."""
    record = log.makeRecord(log.name, level, __file__, 0, message, (), None)
    formatter = next(
        (h.formatter for h in logging.getLogger().handlers if h.formatter is not None), None
    )
    text = (formatter or logging.Formatter()).format(record)
    with contextlib.suppress(OSError):
        os.write(2, text.encode(errors="replace") + b"\n")
