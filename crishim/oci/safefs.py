"""Files inside one directory tree, reached without ever leaving it.

A layout directory belongs to whoever writes it, not to crishim: any of its
paths may be a symlink leading elsewhere, a FIFO, a directory where a file
belongs. :class:`Tree` resolves a relative path one component at a time
from the root (the configured path itself may be a symlink: the operator
chose it), opening every directory with ``O_NOFOLLOW``, so a ``blobs/``
that is a symlink to ``/etc`` is refused instead of followed; it opens only
regular files, with ``O_NONBLOCK`` so a FIFO never blocks, and checks what
it opened with ``fstat``. Deletions go through the same directory file
descriptors, so they can only remove a name inside the tree.

One allowance: a file that is a symlink to a sibling in the same directory
(a bare name, no ``/``) is followed to that sibling, which must itself be a
regular file; blob stores that deduplicate with such links keep working.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class Unsafe(OSError):
    """A path component is not what it must be (a symlink out, not a regular file)."""


class Tree:
    """A directory tree whose files are reached component by component."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @contextlib.contextmanager
    def directory(self, parts: tuple[str, ...]) -> Iterator[int]:
        """A file descriptor for the directory ``root/parts...``; no symlink below root."""
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for part in parts:
                _check_part(part)
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise Unsafe(
                            exc.errno, f"{part} is not a directory of the tree (a symlink?)"
                        ) from None
                    raise
                os.close(fd)
                fd = child
            yield fd
        finally:
            os.close(fd)

    def _open_in(self, fd: int, name: str) -> int:
        _check_part(name)
        try:
            return _regular(os.open(name, _FILE_FLAGS, dir_fd=fd), name)
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
        # a symlink: only to a sibling (a bare name), itself a regular file
        target = os.readlink(name, dir_fd=fd)
        if "/" in target or target in ("", ".", ".."):
            raise Unsafe(errno.ELOOP, f"{name} is a symlink leading out of its directory")
        try:
            return _regular(os.open(target, _FILE_FLAGS, dir_fd=fd), name)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise Unsafe(errno.ELOOP, f"{name} is a chain of symlinks") from None
            raise

    def read(self, path: str, limit: int) -> bytes:
        """At most ``limit`` bytes of the regular file at ``path`` (relative)."""
        *parts, name = path.split("/")
        with self.directory(tuple(parts)) as dir_fd:
            fd = self._open_in(dir_fd, name)
        try:
            chunks = []
            left = limit
            while left > 0:
                chunk = os.read(fd, min(left, 1 << 20))
                if not chunk:
                    break
                chunks.append(chunk)
                left -= len(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def size(self, path: str) -> int:
        """The size of the regular file at ``path``."""
        *parts, name = path.split("/")
        with self.directory(tuple(parts)) as dir_fd:
            fd = self._open_in(dir_fd, name)
        try:
            return os.fstat(fd).st_size
        finally:
            os.close(fd)

    def unlink(self, path: str) -> bool:
        """Remove the name ``path`` inside the tree; False when there was none."""
        *parts, name = path.split("/")
        _check_part(name)
        try:
            with self.directory(tuple(parts)) as dir_fd:
                os.unlink(name, dir_fd=dir_fd)
        except FileNotFoundError:
            return False
        return True


def _check_part(part: str) -> None:
    if not part or part in (".", "..") or "/" in part or "\0" in part:
        raise Unsafe(errno.EINVAL, f"{part!r} is not a name inside the tree")


def _regular(fd: int, name: str) -> int:
    mode = os.fstat(fd).st_mode
    if stat.S_ISREG(mode):
        return fd
    os.close(fd)
    kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
    raise Unsafe(errno.EINVAL, f"{name} is {kind}")
