"""Pulls in flight: admission (a bounded, fair queue) and progress everyone can see.

kubelet sends bursts of PullImage (a node starting a dozen pods) and no
deadline. A :class:`PullBoard` admits at most ``running`` pulls at once and
queues the rest, up to ``queued`` of them, first in first out within a
registry and round-robin across registries, so one slow registry cannot
starve the others; only a full queue answers RESOURCE_EXHAUSTED. A queued
pull whose client goes away leaves the queue. Identical pulls still share
their downloads (the puller does that, below).

Each pull is a :class:`PullState`: reference, backend, state (``queued``,
``resolving``, ``downloading``, ``committing``), bytes done and total per
blob, rate, elapsed. The board feeds what it sees to the pull's span (as
events), to metrics (bytes pulled, pull duration, queue length), to the
status endpoint (:mod:`crishim.status`, read by ``crishim pulls``), and to
the log, once, when a pull is slower than ``slow_after`` seconds.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import metrics as otel_metrics
from opentelemetry import trace

from crishim import __version__
from crishim.errors import TooLarge
from crishim.reference import Reference
from crishim.types import PullProgress

log = logging.getLogger(__name__)

#: The instrumentation scope of the pull metrics.
SCOPE = "crishim"
PULL_BYTES = "crishim.pull.bytes"
PULL_DURATION = "crishim.pull.duration"
PULL_QUEUE = "crishim.pull.queued"
#: Seconds of history the reported rate is taken over.
RATE_WINDOW = 5.0

_ids = itertools.count(1)


@dataclass
class BlobState:
    digest: str
    kind: str
    total: int
    done: int = 0
    state: str = "pending"


@dataclass
class PullState:
    """One PullImage call, from the queue to the answer."""

    reference: str
    registry: str
    backend: str
    id: int = field(default_factory=lambda: next(_ids))
    state: str = "queued"
    created: float = field(default_factory=time.time)
    started: float = field(default_factory=time.monotonic)
    admitted: float | None = None
    blobs: dict[str, BlobState] = field(default_factory=dict)
    span: trace.Span = field(default_factory=trace.get_current_span, repr=False)
    _samples: deque[tuple[float, int]] = field(default_factory=deque, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _reported: set[str] = field(default_factory=set, repr=False)
    slow_logged: bool = False

    # -- what the puller reports -------------------------------------------

    def update(self, event: PullProgress) -> None:
        """A PullRequest.progress callback: a blob's state and bytes."""
        with self._lock:
            blob = self.blobs.get(event.digest)
            if blob is None:
                blob = self.blobs[event.digest] = BlobState(event.digest, event.kind, event.total)
            blob.total = event.total
            blob.done = event.done
            blob.state = event.state
            now = time.monotonic()
            self._samples.append((now, self._done()))
            while self._samples and now - self._samples[0][0] > RATE_WINDOW:
                self._samples.popleft()
            finished = all(b.state in ("done", "exists") for b in self.blobs.values())
            self.state = "committing" if finished else "downloading"
            first_time = event.state in ("done", "exists") and event.digest not in self._reported
            if first_time:
                self._reported.add(event.digest)
        if first_time:
            self.span.add_event(
                "crishim.pull.blob",
                {"oci.digest": event.digest, "oci.kind": event.kind, "oci.size": event.total},
            )

    def _done(self) -> int:
        return sum(b.done for b in self.blobs.values())

    # -- what it looks like ------------------------------------------------

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def rate(self) -> float:
        """Bytes per second over the last few seconds."""
        with self._lock:
            if len(self._samples) < 2:
                return 0.0
            (t0, b0), (t1, b1) = self._samples[0], self._samples[-1]
        return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready picture (what the status endpoint serves)."""
        rate = self.rate()
        with self._lock:
            blobs = [
                {
                    "digest": b.digest,
                    "kind": b.kind,
                    "total": b.total,
                    "done": b.done,
                    "state": b.state,
                }
                for b in self.blobs.values()
            ]
            return {
                "id": self.id,
                "reference": self.reference,
                "registry": self.registry,
                "backend": self.backend,
                "state": self.state,
                "elapsed": round(self.elapsed, 3),
                "queued_for": round((self.admitted or time.monotonic()) - self.started, 3),
                "done": sum(b["done"] for b in blobs),
                "total": sum(b["total"] for b in blobs),
                "rate": round(rate, 1),
                "blobs": blobs,
            }

    def summary(self) -> str:
        picture = self.snapshot()
        return (
            f"{picture['done']} of {picture['total']} bytes, {picture['rate'] / 1e6:.2f} MB/s, "
            f"{picture['state']}"
        )


class PullBoard:
    """Admits pulls (at most ``running`` at once, ``queued`` waiting) and shows them."""

    def __init__(
        self,
        running: int,
        queued: int,
        *,
        slow_after: float = 60.0,
        meter_provider: otel_metrics.MeterProvider | None = None,
    ) -> None:
        self.running = running
        self.queued = queued
        self.slow_after = slow_after
        self._cond = threading.Condition()
        self._active: set[int] = set()
        #: registry -> its waiting pulls, oldest first; registries in turn order
        self._waiting: OrderedDict[str, deque[PullState]] = OrderedDict()
        self._count = 0
        self._pulls: dict[int, PullState] = {}
        self._bytes: Any = None
        self._duration: Any = None
        if meter_provider is not None:
            meter = meter_provider.get_meter(SCOPE, __version__)
            self._bytes = meter.create_counter(
                PULL_BYTES, unit="By", description="Bytes of blobs pulled, by backend."
            )
            self._duration = meter.create_histogram(
                PULL_DURATION, unit="s", description="PullImage duration, by backend and outcome."
            )
            meter.create_observable_gauge(
                PULL_QUEUE,
                callbacks=[self._observe_queue],
                unit="{pull}",
                description="Pulls waiting for a slot.",
            )

    def _observe_queue(self, options: Any) -> list[otel_metrics.Observation]:
        return [otel_metrics.Observation(self._count)]

    # -- admission ---------------------------------------------------------

    def enter(self, ref: Reference, backend: str) -> PullState:
        """Register a pull: admitted at once when a slot is free, else queued.

        A full queue is RESOURCE_EXHAUSTED, the one refusal.
        """
        state = PullState(reference=str(ref), registry=ref.domain, backend=backend)
        with self._cond:
            if len(self._active) < self.running and self._count == 0:
                self._admit(state)
            elif self._count >= self.queued:
                raise TooLarge(
                    f"cannot pull {ref}: the pull queue is full, {len(self._active)} running "
                    f"(server.max_concurrent_pulls: {self.running}) and {self._count} waiting "
                    f"(server.max_queued_pulls: {self.queued}); retry later"
                )
            else:
                self._waiting.setdefault(state.registry, deque()).append(state)
                self._count += 1
            self._pulls[state.id] = state
            # the queue's length with this pull in it, as it was when it joined
            queue = self._count
        if state.admitted is None:
            state.span.add_event("crishim.pull.queued", {"crishim.pull.queue": queue})
        return state

    def _admit(self, state: PullState) -> None:
        self._active.add(state.id)
        state.admitted = time.monotonic()
        state.state = "resolving"

    def _next(self) -> None:
        """Fill free slots from the queue, one registry after the other; lock held."""
        while len(self._active) < self.running and self._waiting:
            registry, waiting = next(iter(self._waiting.items()))
            state = waiting.popleft()
            self._count -= 1
            # the registry goes to the back of the turn order
            del self._waiting[registry]
            if waiting:
                self._waiting[registry] = waiting
            self._admit(state)
        self._cond.notify_all()

    def wait(self, state: PullState, gone: Callable[[], bool], poll: float = 0.2) -> bool:
        """Wait until the pull is admitted (True) or ``gone()`` says its caller left (False,
        and the pull has left the queue)."""
        while True:
            with self._cond:
                if state.admitted is None and gone():
                    self._drop(state)
                    return False
                if state.admitted is None:
                    self._cond.wait(poll)
                if state.admitted is not None:
                    break
            # a pull is slow for its caller whether it waits or runs
            self.check_slow(state)
        state.span.add_event(
            "crishim.pull.admitted", {"crishim.pull.queued_for": state.admitted - state.started}
        )
        return True

    def _drop(self, state: PullState) -> None:
        """Take a queued pull out of the queue and off the board; lock held."""
        self._pulls.pop(state.id, None)
        waiting = self._waiting.get(state.registry)
        if waiting is not None and state in waiting:
            waiting.remove(state)
            self._count -= 1
            if not waiting:
                del self._waiting[state.registry]

    def leave(self, state: PullState) -> None:
        """The pull's slot (or queue place) is free; it is gone from the board. Idempotent.

        Gone at once, with its slot: the board never lists more pulls running
        than it admits, though the call itself answers a moment later."""
        with self._cond:
            if state.id in self._active:
                self._active.discard(state.id)
                self._pulls.pop(state.id, None)
                self._next()
            else:
                self._drop(state)

    def finish(self, state: PullState, outcome: str) -> None:
        """The call ended (``ok`` or a status name): leave, and record what it did."""
        self.leave(state)
        attributes = {"crishim.backend": state.backend, "crishim.pull.outcome": outcome}
        if self._duration is not None:
            self._duration.record(state.elapsed, attributes)
        if self._bytes is not None:
            fetched = sum(
                b.done for b in state.blobs.values() if b.state in ("done", "downloading")
            )
            if fetched:
                self._bytes.add(fetched, {"crishim.backend": state.backend})

    def check_slow(self, state: PullState) -> None:
        """Log once, at INFO, that a pull takes longer than ``slow_after``."""
        if state.slow_logged or state.elapsed < self.slow_after:
            return
        state.slow_logged = True
        log.info(
            "pull of %s is taking long: %.0f s so far (%s)",
            state.reference,
            state.elapsed,
            state.summary(),
        )

    # -- what the status endpoint serves -----------------------------------

    def snapshot(self) -> dict[str, Any]:
        # the pulls' pictures are taken with the counts, under the lock, so what
        # one reader sees agrees with itself (a pull admitted meanwhile is not
        # both counted queued and shown resolving)
        with self._cond:
            return {
                "running": len(self._active),
                "queued": self._count,
                "max_running": self.running,
                "max_queued": self.queued,
                "pulls": [p.snapshot() for p in sorted(self._pulls.values(), key=lambda p: p.id)],
            }
