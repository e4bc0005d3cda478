"""Atomic file replacement: write aside, fsync, rename, fsync the directory.

A crash at any point leaves the old file or the new one, never a mix. For
crash tests, the environment variable ``CRISHIM_FAULT`` names a point at
which the process kills itself with SIGKILL (``atomic:before-rename``,
``atomic:after-rename``); it is read on every write, costs nothing else,
and is documented as a test hook.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
from pathlib import Path

FAULT_ENV = "CRISHIM_FAULT"


def fault_point(name: str) -> None:
    """Die here, as if killed -9, when ``CRISHIM_FAULT`` names this point."""
    if os.environ.get(FAULT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically and durably."""
    directory = path.parent
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        fault_point("atomic:before-rename")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fault_point("atomic:after-rename")
    fsync_dir(directory)
