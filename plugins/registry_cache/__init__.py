"""The ``registry-cache`` backend type: images pulled from OCI registries into a local store."""

from __future__ import annotations

from collections.abc import Iterable

from crishim import hookimpl
from crishim.types import BackendType

from .backend import RegistryCacheBackend
from .options import RegistryCacheOptions


@hookimpl
def crishim_backend_types() -> Iterable[BackendType]:
    return [
        BackendType(
            name="registry-cache",
            factory=RegistryCacheBackend,
            options_model=RegistryCacheOptions,
            description="pulls images from OCI distribution registries into a local store",
        )
    ]


__all__ = ["RegistryCacheBackend", "RegistryCacheOptions", "crishim_backend_types"]
