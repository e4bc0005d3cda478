"""The files of an OCI layout or an archive, read in place: a directory or a tar file.

``crishim import`` reads images from what :class:`Files` gives: the
regular files of a directory (a path never leaves it) or the regular
members of a tar file, plain or compressed, never extracted (several
members may be read at once: the puller fetches blobs concurrently).
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
import threading
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Protocol

from crishim.errors import InvalidRequest


class ArchiveError(InvalidRequest):
    """The path holds no image crishim can import; the message says why."""


class Stream(Protocol):
    """A readable file (closed by leaving ``with``)."""

    def read(self, size: int = -1, /) -> bytes: ...

    def __enter__(self) -> Any: ...

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
        /,
    ) -> Any: ...


class Files(Protocol):
    """The files of a layout or archive, by path inside it."""

    origin: str

    def open(self, name: str) -> tuple[Stream, int]:
        """A readable stream and the size of a regular file; ArchiveError if absent."""
        ...


class DirectoryFiles:
    """Files under a directory; a path never leaves it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.origin = str(root)
        self._real = os.path.realpath(root)

    def open(self, name: str) -> tuple[Stream, int]:
        path = os.path.realpath(os.path.join(self._real, name))
        if not path.startswith(self._real + os.sep):
            raise ArchiveError(f"{self.origin}: {name} leads outside the layout")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            raise ArchiveError(f"{self.origin}: {name} is missing") from None
        except OSError as exc:
            raise ArchiveError(f"{self.origin}: {name}: {exc.strerror}") from None
        st = os.fstat(fd)
        if not _is_regular(st.st_mode):
            os.close(fd)
            raise ArchiveError(f"{self.origin}: {name} is not a regular file")
        return os.fdopen(fd, "rb"), st.st_size


def _is_regular(mode: int) -> bool:
    return stat.S_ISREG(mode)


class TarFiles:
    """Regular members of a tar file (plain or compressed), never extracted."""

    def __init__(self, path: Path) -> None:
        self.origin = str(path)
        # members share the archive's file: the puller reads several at once
        self._lock = threading.Lock()
        try:
            self.tar = tarfile.open(path, "r:*")  # noqa: SIM115 - closed by close()
        except (tarfile.TarError, OSError) as exc:
            raise ArchiveError(f"{path} is not a tar archive or OCI layout: {exc}") from None
        try:
            self.members = {_member_name(m.name): m for m in self.tar.getmembers() if m.isfile()}
        except (tarfile.TarError, OSError, EOFError) as exc:
            self.tar.close()
            raise ArchiveError(f"{path}: the archive is damaged: {exc}") from None

    def open(self, name: str) -> tuple[Stream, int]:
        member = self.members.get(_member_name(name))
        if member is None:
            raise ArchiveError(f"{self.origin}: {name} is not in the archive")
        with self._lock:
            stream = self.tar.extractfile(member)
        if stream is None:
            raise ArchiveError(f"{self.origin}: {name} cannot be read")
        return _Locked(stream, self._lock), member.size

    def close(self) -> None:
        self.tar.close()


class _Locked(io.RawIOBase):
    """A member's stream whose reads take the archive's lock."""

    def __init__(self, stream: IO[bytes], lock: threading.Lock) -> None:
        super().__init__()
        self._stream = stream
        self._lock = lock

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        with self._lock:
            return self._stream.read(size)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        with self._lock:
            self._stream.close()
        super().close()


def _member_name(name: str) -> str:
    return os.path.normpath(name.removeprefix("./")).lstrip("/")
