"""The ``oci-dir`` backend type: images from an OCI image-layout directory."""

from __future__ import annotations

from collections.abc import Iterable

from crishim import hookimpl
from crishim.types import BackendType

from .backend import OciDirBackend, OciDirOptions


@hookimpl
def crishim_backend_types() -> Iterable[BackendType]:
    return [
        BackendType(
            name="oci-dir",
            factory=OciDirBackend,
            options_model=OciDirOptions,
            description="images from an OCI image-layout directory",
        )
    ]


__all__ = ["OciDirBackend", "OciDirOptions", "crishim_backend_types"]
