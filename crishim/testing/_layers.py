"""Deterministic layer tarballs for :mod:`crishim.testing.ocibuild` (which re-exports the names).

A layer's files map image paths to plain ``bytes``/``str`` (a regular file,
mode 0644), :class:`File` (a regular file with another mode) or
:class:`Symlink`; the tar has fixed ownership, modes and timestamps, every
parent directory before its children, and its gzip stream no name and
mtime 0. Standard library only.
"""

from __future__ import annotations

import gzip
import io
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass

_GZIP_LEVEL = 6
_FILE_MODE = 0o644
_DIR_MODE = 0o755
_SYMLINK_MODE = 0o777


@dataclass(frozen=True)
class File:
    """A regular file in a layer with an explicit mode (``0o755`` for an executable).

    A plain ``bytes``/``str`` value is the same as ``File(value, mode=0o644)``
    and gives the same tar bytes. ``str`` content is UTF-8 encoded. Owner is
    always 0:0 and mtime 0, as for every entry. Raises TypeError or
    ValueError for other content or a mode outside ``0o0..0o7777``.

    Example::

        builder.image(files={"usr/bin/tool": File(b"#!/bin/sh", mode=0o755)})
    """

    content: bytes | str
    mode: int = _FILE_MODE

    def __post_init__(self) -> None:
        if not isinstance(self.content, bytes | str):
            raise TypeError(f"File content must be bytes or str, not {type(self.content)}")
        if not 0 <= self.mode <= 0o7777:
            raise ValueError(f"File mode must be within 0o0..0o7777, not {self.mode:#o}")


@dataclass(frozen=True)
class Symlink:
    """A symbolic link in a layer pointing at ``target`` (relative or absolute).

    The target is stored as given and never checked against the layer.

    Example::

        builder.image(files={"bin/busybox": File(busybox, 0o755), "bin/sh": Symlink("busybox")})
    """

    target: str

    def __post_init__(self) -> None:
        if not self.target or "\0" in self.target:
            raise ValueError(f"invalid symlink target {self.target!r}")


#: What a layer file map may hold for one path.
LayerEntry = bytes | str | File | Symlink
#: A layer's files: image path -> content (see :meth:`LayoutBuilder.layer`).
LayerFiles = Mapping[str, LayerEntry]


def _normalise_path(raw: str) -> tuple[str, bool]:
    """Return (clean relative path, is_directory) for a layer file key."""
    is_dir = raw.endswith("/")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if not parts:
        raise ValueError(f"invalid layer path {raw!r}")
    if ".." in parts:
        raise ValueError(f"layer path must not contain '..': {raw!r}")
    return "/".join(parts), is_dir


def as_bytes(value: bytes | str) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def _as_entry(raw: str, value: LayerEntry) -> File | Symlink:
    if isinstance(value, File | Symlink):
        return value
    if isinstance(value, bytes | bytearray | memoryview | str):
        return File(as_bytes(value), mode=_FILE_MODE)
    raise TypeError(f"layer path {raw!r}: unsupported value {type(value).__name__}")


def tar_bytes(files: LayerFiles) -> bytes:
    """Build a deterministic uncompressed tar of ``files`` (parent dirs added)."""
    # path -> entry; None for directories
    entries: dict[str, File | Symlink | None] = {}

    def add_dir(path: str) -> None:
        if entries.get(path) is not None:
            raise ValueError(f"layer path {path!r} is both a file and a directory")
        entries[path] = None

    for raw, value in files.items():
        path, is_dir = _normalise_path(raw)
        parts = path.split("/")
        for i in range(1, len(parts)):
            add_dir("/".join(parts[:i]))
        if is_dir:
            if isinstance(value, File | Symlink) or as_bytes(value):
                raise ValueError(f"directory entry {raw!r} must have empty content")
            add_dir(path)
            continue
        if path in entries:
            raise ValueError(f"duplicate or conflicting layer path {raw!r}")
        entries[path] = _as_entry(raw, value)

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        # Sorting by path puts every parent directory before its children.
        for path in sorted(entries):
            content = entries[path]
            info = tarfile.TarInfo(path)
            info.mtime = 0
            info.uid = 0
            info.gid = 0
            info.uname = ""
            info.gname = ""
            if content is None:
                info.type = tarfile.DIRTYPE
                info.mode = _DIR_MODE
                tar.addfile(info)
            elif isinstance(content, Symlink):
                info.type = tarfile.SYMTYPE
                info.mode = _SYMLINK_MODE
                info.linkname = content.target
                tar.addfile(info)
            else:
                info.type = tarfile.REGTYPE
                info.mode = content.mode
                data = as_bytes(content.content)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    """Gzip ``data`` with no file name, mtime 0 and a fixed compression level."""
    buf = io.BytesIO()
    with gzip.GzipFile(
        filename="", mode="wb", fileobj=buf, compresslevel=_GZIP_LEVEL, mtime=0
    ) as gz:
        gz.write(data)
    return buf.getvalue()
