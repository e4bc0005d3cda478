"""Atomic file replacement: write aside, fsync, rename, fsync the directory.

A crash at any point leaves the old file or the new one, never a mix. For
crash tests, the environment variable ``CRISHIM_FAULT`` names a point at
which the process kills itself with SIGKILL (``<what>:before-rename``,
``<what>:after-rename``, where ``what`` is the ``fault`` name a caller
gives, e.g. ``index`` for index.json updates); it is read on every write,
costs nothing else, and is documented as a test hook.
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


def stale_temp_files(directory: Path, name: str) -> list[Path]:
    """Temp files an interrupted :func:`atomic_write` of ``name`` left behind."""
    return sorted(directory.glob(f".{name}.*.tmp"))


def atomic_write(path: Path, data: bytes, mode: int = 0o644, fault: str = "atomic") -> None:
    """Replace ``path`` with ``data`` atomically and durably."""
    directory = path.parent
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        fault_point(f"{fault}:before-rename")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fault_point(f"{fault}:after-rename")
    fsync_dir(directory)
