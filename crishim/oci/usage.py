"""What a store occupies on disk (ImageFsInfo), measured off the call path.

:func:`measure` walks a directory once: allocated bytes and inodes, and
the mountpoint of its filesystem. A walk of a large layout takes seconds,
so a backend never walks on a call: :class:`UsageMeter` keeps the last
figure and re-measures in the background when asked, requests made
meanwhile coalescing into one walk (:class:`crishim.oci.store.ContentStore`
keeps running totals instead, adjusted as it commits and deletes blobs).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from crishim.model import FilesystemUsage
from crishim.oci.coalesce import Coalesced

log = logging.getLogger(__name__)


def _walk(root: Path) -> Iterator[os.stat_result]:
    stack = [str(root)]
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as it:
                for item in it:
                    st = item.stat(follow_symlinks=False)
                    yield st
                    if item.is_dir(follow_symlinks=False):
                        stack.append(item.path)
        except OSError:
            continue


def mountpoint_of(path: Path) -> str:
    """The mountpoint of the filesystem holding ``path``."""
    current = path.resolve()
    dev = current.stat().st_dev
    while current != current.parent:
        parent = current.parent
        try:
            if parent.stat().st_dev != dev:
                break
        except OSError:
            break
        current = parent
    return str(current)


def measure(root: Path) -> FilesystemUsage:
    """Bytes (allocated blocks) and inodes the directory occupies, and where."""
    used = 0
    inodes = 1
    for st in _walk(root):
        used += st.st_blocks * 512
        inodes += 1
    return FilesystemUsage(
        mountpoint=mountpoint_of(root),
        used_bytes=used,
        inodes_used=inodes,
        timestamp_ns=time.time_ns(),
    )


class UsageMeter:
    """One directory's usage: the last measured figure, re-measured in the background."""

    def __init__(self, name: str, root: Path, stop: threading.Event) -> None:
        self.name = name
        self.root = root
        #: What ``filesystem_usage`` answers: empty until the first measure.
        self.current: tuple[FilesystemUsage, ...] = ()
        self._worker: Coalesced[None] = Coalesced(
            f"{name}-measure", lambda _: self.measure(), stop=stop
        )

    @property
    def latest(self) -> FilesystemUsage | None:
        return self.current[0] if self.current else None

    def set(self, usage: FilesystemUsage) -> None:
        """Take a figure measured before (a snapshot's)."""
        self.current = (usage,)

    def measure(self) -> None:
        """Walk the directory now, in this thread."""
        try:
            self.current = (measure(self.root),)
        except OSError as exc:
            log.warning("backend %s: cannot measure %s: %s", self.name, self.root, exc)

    def request(self) -> None:
        """Have it measured again in the background (requests made meanwhile coalesce)."""
        self._worker.request(None)

    def join(self, timeout: float) -> None:
        self._worker.join(timeout)
