"""Hostile layouts and content, for tests of backends that read files or registries.

Every helper turns part of an OCI image layout (one :class:`LayoutBuilder`
wrote) into something a broken or hostile node might hold: a directory
that is a symlink out of the layout, a FIFO or a directory where a file
belongs, JSON nested deep enough to break a recursive parser, a descriptor
claiming a huge size. A backend must answer each the same way: the broken
entry (or layout) costs its own answers, never a start-up, another backend,
a hang, or a file outside the layout.

Only the standard library is used.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

__all__ = [
    "NESTING_DEPTH",
    "dir_instead",
    "fifo_instead",
    "nesting_bomb",
    "symlink_out",
    "write_blob",
]

#: Deep enough to overflow Python's recursive JSON parser (and most others).
NESTING_DEPTH = 100_000


def nesting_bomb(depth: int = NESTING_DEPTH) -> bytes:
    """A JSON document of ``depth`` nested arrays inside an object: valid, and hostile.

    Example::

        >>> nesting_bomb(3)
        b'{"x":[[[]]]}'
    """
    return b'{"x":' + b"[" * depth + b"]" * depth + b"}"


def write_blob(layout: Path, data: bytes) -> str:
    """Store ``data`` as a blob of the layout; its digest (so the digest check passes).

    Example::

        digest = write_blob(layout_root, nesting_bomb())  # a config that is valid JSON, deep
        manifest["config"] = {"mediaType": OCI_CONFIG, "digest": digest, "size": size}
    """
    digest = hashlib.sha256(data).hexdigest()
    path = layout / "blobs" / "sha256" / digest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return f"sha256:{digest}"


def symlink_out(path: Path, outside: Path) -> Path:
    """Move ``path`` (a file or a directory) to ``outside`` and leave a symlink to it.

    What the link leads to is an identical copy, so a reader that follows it
    would find valid content: only the path tells it does not belong.

    Example::

        symlink_out(builder.blob_path(image.config.digest), tmp_path / "elsewhere" / "config")
        # the backend must skip the image, and never read tmp_path / "elsewhere"
    """
    outside.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(path), str(outside))
    path.symlink_to(outside)
    return outside


def fifo_instead(path: Path) -> None:
    """Replace the file at ``path`` with a FIFO (a reader that opens it blindly blocks).

    Example::

        fifo_instead(builder.blob_path(image.manifest.digest))
        # start() must still return, the image skipped
    """
    path.unlink(missing_ok=True)
    os.mkfifo(path)


def dir_instead(path: Path) -> None:
    """Replace the file at ``path`` with a directory.

    Example::

        dir_instead(builder.root / "index.json")  # the layout is broken, not the server
    """
    path.unlink(missing_ok=True)
    path.mkdir()
