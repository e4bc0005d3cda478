"""The ``cri`` backend type: every call forwarded to another CRI image service.

CRI-O, containerd's CRI plugin or another crishim keep their own store;
crishim puts its tracing, filters and pins in front of it. Nothing is
cached: the upstream is the truth.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_backend
from .options import CriOptions

if TYPE_CHECKING:
    from .backend import CriBackend

crishim_backend_types, __getattr__ = lazy_backend(
    "cri",
    __name__,
    "CriBackend",
    CriOptions,
    "forwards every call to another CRI image service (CRI-O, containerd)",
)

__all__ = ["CriBackend", "CriOptions", "crishim_backend_types"]
