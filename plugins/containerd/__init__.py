"""The containerd backend: crishim in front of containerd's own image store."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_backend
from .options import ContainerdOptions

if TYPE_CHECKING:
    from .backend import ContainerdBackend

crishim_backend_types, __getattr__ = lazy_backend(
    "containerd",
    __name__,
    "ContainerdBackend",
    ContainerdOptions,
    "serves and pulls into containerd's own image store (its gRPC API)",
)

__all__ = ["ContainerdBackend", "ContainerdOptions", "crishim_backend_types"]
