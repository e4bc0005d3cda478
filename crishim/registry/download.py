"""Blob downloads: streamed into a verifying writer, watched, resumed where they broke.

A download that breaks after some bytes (a reset, a stall the
:class:`Watchdog` sees) continues with an HTTP Range request: a reset on
the same endpoint, a stall on the next one (the same when there is no
other). The writer goes on hashing and counting, so the whole blob is
verified whichever endpoints its bytes came from.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import httpx

from crishim.errors import ImageNotFound, Unavailable
from crishim.oci.atomic import fault_point

if TYPE_CHECKING:
    from .endpoints import Endpoint
    from .session import Session

log = logging.getLogger(__name__)

#: Retries of one blob after the first attempt broke.
RETRIES = 2


@dataclass(frozen=True)
class Watchdog:
    """When a blob download counts as stuck: no byte for ``stall`` seconds, or less
    than ``min_rate`` bytes/s over ``window`` seconds (``min_rate`` 0: no rate check)."""

    stall: float = 60.0
    min_rate: int = 0
    window: float = 30.0


class Stalled(Exception):
    """A blob download made too little progress (internal: it is retried)."""


class ByteSink(Protocol):
    """Where a downloaded blob's bytes go (a store's verifying writer)."""

    def write(self, data: bytes) -> None: ...


class BlobDownload:
    """One blob from a session's endpoints into ``writer``, starting at :attr:`Session.endpoint`.

    After :data:`RETRIES` retries the pull fails UNAVAILABLE naming the blob,
    the endpoints and what each attempt saw.
    """

    def __init__(
        self,
        session: Session,
        digest: str,
        writer: ByteSink,
        on_bytes: Callable[[int], None] | None = None,
    ) -> None:
        self.session = session
        self.digest = digest
        self.writer = writer
        self.on_bytes = on_bytes
        #: Bytes ``writer`` has had; a retry resumes from there.
        self.done = 0

    def run(self) -> None:
        session = self.session
        order = [session.endpoint, *(e for e in session.endpoints if e is not session.endpoint)]
        endpoint = order[0]
        failures: list[str] = []
        for attempt in range(RETRIES + 1):
            following = order[(order.index(endpoint) + 1) % len(order)]
            try:
                self.attempt(endpoint)
                return
            except Stalled as exc:
                failures.append(f"{endpoint.base}: {exc}")
                nxt = following
            except (Unavailable, ImageNotFound) as exc:
                if len(order) == 1 and (self.done == 0 or isinstance(exc, ImageNotFound)):
                    raise  # nothing received, or not there, and nowhere else to go
                failures.append(str(exc))
                # a reset after some bytes: once more where it broke, then elsewhere;
                # an endpoint without the blob: the next one
                resumable = self.done and attempt == 0 and isinstance(exc, Unavailable)
                nxt = endpoint if resumable else following
            log.info(
                "%s: blob %s broke after %d bytes at %s (%s); resuming at %s",
                session.deadline.what,
                self.digest,
                self.done,
                endpoint.base,
                failures[-1],
                nxt.base,
            )
            endpoint = nxt
        raise Unavailable(
            f"{session.deadline.what}: {session.host}: blob {self.digest} could not be "
            f"downloaded ({self.done} bytes received): " + "; ".join(failures)
        )

    def attempt(self, endpoint: Endpoint) -> None:
        """Stream the blob from ``endpoint``, from :attr:`done` on (a Range request),
        skipping what a server that ignores the range sends again."""
        session, digest = self.session, self.digest
        offset = self.done
        url = endpoint.url(session.repository, "blobs", digest)
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        watchdog = session.watchdog
        response = session.send(endpoint, url, headers, read_timeout=watchdog.stall)
        try:
            skip = 0
            if offset and response.status_code == 206:
                started = response.headers.get("content-range", "").partition(" ")[2]
                if not started.startswith(f"{offset}-"):
                    raise Unavailable(
                        f"{session.where_at(endpoint)}: blob {digest}: the registry answered "
                        f"the range from {offset} with {session.safe(started) or 'no range'}"
                    )
            else:
                session.check(response, endpoint, f"blob {digest}")
                skip = offset  # the whole blob again: what was written is skipped
            with session.network(endpoint):
                self._stream(response, skip, watchdog)
        finally:
            response.close()

    def _stream(self, response: httpx.Response, skip: int, watchdog: Watchdog) -> None:
        deadline, writer, on_bytes = self.session.deadline, self.writer, self.on_bytes
        first = True
        window_start = time.monotonic()
        window_bytes = 0
        stream = response.iter_raw()
        while True:
            try:
                chunk = next(stream)
            except StopIteration:
                return
            except httpx.ReadTimeout:
                deadline.check()
                raise Stalled(f"no bytes for {watchdog.stall:g}s") from None
            deadline.check()
            if skip:
                dropped = min(skip, len(chunk))
                skip -= dropped
                chunk = chunk[dropped:]
                if not chunk:
                    continue
            writer.write(chunk)
            self.done += len(chunk)
            if on_bytes is not None:
                on_bytes(len(chunk))
            if first:
                first = False
                fault_point("registry:mid-blob")
            if watchdog.min_rate:
                window_bytes += len(chunk)
                elapsed = time.monotonic() - window_start
                if elapsed >= watchdog.window:
                    rate = window_bytes / elapsed
                    if rate < watchdog.min_rate:
                        raise Stalled(
                            f"{rate:.0f} bytes/s over {elapsed:.0f}s, under the "
                            f"{watchdog.min_rate} bytes/s min_pull_rate"
                        )
                    window_start, window_bytes = time.monotonic(), 0
