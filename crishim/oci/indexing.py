"""What both layout backends (``oci-dir``, ``registry-cache``) do around a :class:`Layout`.

* :class:`LayoutIndex`: the layout's entries as last read, re-read with
  reuse (an entry seen before is not read again: blobs are
  content-addressed) and published whole to the backend's
  :class:`~crishim.index.ImageIndex`, with the identity of the
  ``index.json`` they came from, so a change is told by a ``stat``;
* :meth:`LayoutIndex.removal`: what removing an image drops, and the blobs
  only it kept alive (:class:`Removal`);
* :func:`rewrite_making_room`: an ``index.json`` rewrite that, on a full
  disk, deletes the removed image's own blobs first and tries again;
* :func:`follow`: re-index when ``index.json`` changes (inotify through
  watchfiles, and a periodic check of its identity as the safety net).

The locking stays the backend's (a thread lock, or the store's lock
across processes): these run under it.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from crishim.model import ImageRecord
from crishim.oci.layout import FileIdentity, Layout, Scan, file_identity
from crishim.oci.resolve import EntryKey, EntryResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Removal:
    """Removing one image: the entries naming it, and those that stay."""

    image_id: str
    keys: frozenset[EntryKey]
    doomed: tuple[EntryResult, ...]
    remaining: tuple[EntryResult, ...]

    def incomplete(self) -> list[EntryResult]:
        """Remaining entries whose blob closure could not be read whole."""
        return [r for r in self.remaining if not r.complete]

    def garbage(self) -> set[str]:
        """The blobs the removed entries reach and no remaining entry does."""
        candidates: set[str] = set()
        for result in self.doomed:
            candidates.update(result.closure)
        for result in self.remaining:
            candidates.difference_update(result.closure)
            if not candidates:
                break
        return candidates


class LayoutIndex:
    """The entries of one layout a backend serves: re-read with reuse, published whole.

    ``publish`` is the backend's ``IndexedBackend.publish``. Not locked:
    the backend calls it under its own lock.
    """

    def __init__(
        self, name: str, layout: Layout, publish: Callable[[Iterable[ImageRecord]], None]
    ) -> None:
        self.name = name
        self.layout = layout
        self._publish = publish
        #: The entries as last read, in index.json order.
        self.results: tuple[EntryResult, ...] = ()
        #: The identity of the index.json they were read from.
        self.identity: FileIdentity | None = None
        #: Bumped on every published index; tests and tools wait on it.
        self.generation = 0

    def changed(self) -> bool:
        """Whether index.json is not the file the published entries came from."""
        return file_identity(self.layout.index_path) != self.identity

    def install(self, results: tuple[EntryResult, ...], identity: FileIdentity | None) -> None:
        """Publish these entries' records as the backend's index."""
        self.results = results
        self.identity = identity
        self._publish(r.record for r in results if r.record is not None)
        self.generation += 1

    def rescan(self, previous: tuple[EntryResult, ...] | None = None) -> Scan:
        """Read index.json again, reusing known entries (``previous``, else the current); publish.

        An entry that cannot be served is logged once, when first seen.
        Raises BrokenEntry when the layout itself cannot be read, and
        then changes nothing.
        """
        identity = file_identity(self.layout.index_path)
        known = {r.key: r for r in (self.results if previous is None else previous)}
        scan = self.layout.scan(known)
        for result in scan.results:
            if result.problem and result.key not in known:
                digest, name, _ = result.key
                log.warning(
                    "backend %s: skipped entry %s%s: %s",
                    self.name,
                    digest,
                    f" ({name})" if name else "",
                    result.problem,
                )
        self.install(scan.results, identity)
        return scan

    def removal(self, image_id: str) -> Removal | None:
        """What removing the image with this ID drops; None when no entry names it."""
        doomed = tuple(r for r in self.results if r.record is not None and r.record.id == image_id)
        if not doomed:
            return None
        keys = frozenset(r.key for r in doomed)
        remaining = tuple(r for r in self.results if r.key not in keys)
        return Removal(image_id, keys, doomed, remaining)

    def follow(
        self,
        refresh: Callable[[], object],
        stop: threading.Event,
        interval: float,
        *,
        notify: bool,
    ) -> threading.Thread:
        """Run ``refresh()`` whenever index.json changes (see :func:`follow`)."""
        return follow(
            self.name, self.layout.root, self.changed, refresh, stop, interval, notify=notify
        )

    def live_blobs(self) -> set[str]:
        """Every blob an entry reaches."""
        live: set[str] = set()
        for result in self.results:
            live.update(result.closure)
        return live


def rewrite_making_room(
    name: str, what: str, rewrite: Callable[[], object], make_room: Callable[[], int]
) -> int:
    """Run ``rewrite`` (an index.json update); on a full disk make room first and run it again.

    The rewrite needs room for the new index.json beside the old one. On a
    full disk ``make_room()`` deletes the blobs only the removed entries
    use (a crash then leaves entries whose blobs are gone: they are
    skipped, the image is absent, as removed). Returns what it freed;
    any other OSError, and one from the second try, is raised.
    """
    try:
        rewrite()
        return 0
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
    freed = make_room()
    log.warning(
        "backend %s: the disk is full: deleted the %d blobs of %s before rewriting index.json",
        name,
        freed,
        what,
    )
    rewrite()
    return freed


def follow(
    name: str,
    root: Path,
    changed: Callable[[], bool],
    refresh: Callable[[], object],
    stop: threading.Event,
    interval: float,
    *,
    notify: bool,
) -> threading.Thread:
    """Call ``refresh()`` whenever ``changed()`` says index.json changed, until ``stop``.

    On a thread of its own (returned, started): ``changed()`` is asked
    every ``interval`` seconds and, with ``notify``, as soon as inotify
    reports a write of ``root/index.json`` (watchfiles; polling alone if
    it fails). A refresh that raises is logged, and the previous index
    stays.
    """

    def check() -> None:
        if stop.is_set() or not changed():
            return
        try:
            refresh()
        except Exception:
            log.exception("backend %s: re-index failed; still serving the previous index", name)

    def watch() -> None:
        if notify:
            try:
                import watchfiles

                for _ in watchfiles.watch(
                    root,
                    watch_filter=lambda change, path: os.path.basename(path) == "index.json",
                    debounce=200,
                    step=50,
                    stop_event=stop,
                    rust_timeout=int(interval * 1000),
                    yield_on_timeout=True,
                    recursive=False,
                    raise_interrupt=False,
                ):
                    check()
                return
            except Exception:
                if stop.is_set():
                    return
                log.exception("backend %s: watcher failed; falling back to polling", name)
        while not stop.wait(interval):
            check()

    thread = threading.Thread(target=watch, name=f"{name}-watch", daemon=True)
    thread.start()
    return thread
