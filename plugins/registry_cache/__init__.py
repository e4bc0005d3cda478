"""The ``registry-cache`` backend type: images pulled from OCI registries into a local store."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_backend
from .options import RegistryCacheOptions

if TYPE_CHECKING:
    from .backend import RegistryCacheBackend

crishim_backend_types, __getattr__ = lazy_backend(
    "registry-cache",
    __name__,
    "RegistryCacheBackend",
    RegistryCacheOptions,
    "pulls images from OCI distribution registries into a local store",
)

__all__ = ["RegistryCacheBackend", "RegistryCacheOptions", "crishim_backend_types"]
