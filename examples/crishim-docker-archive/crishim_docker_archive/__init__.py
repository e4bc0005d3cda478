"""The ``docker-archive`` backend type for crishim.

Serves, read-only, the images of a directory of ``docker save`` archives
(plain or gzip-compressed tar files). Registered through the entry-point
group ``crishim.plugins``; see README.md.
"""

from __future__ import annotations

from collections.abc import Iterable

from crishim import hookimpl
from crishim.types import BackendType

from .archive import ArchiveError, read_archive
from .backend import DockerArchiveBackend, DockerArchiveOptions

__version__ = "0.1.0"


@hookimpl
def crishim_backend_types() -> Iterable[BackendType]:
    return [
        BackendType(
            name="docker-archive",
            factory=DockerArchiveBackend,
            options_model=DockerArchiveOptions,
            description="images from a directory of `docker save` archives (read-only)",
        )
    ]


__all__ = [
    "ArchiveError",
    "DockerArchiveBackend",
    "DockerArchiveOptions",
    "crishim_backend_types",
    "read_archive",
]
