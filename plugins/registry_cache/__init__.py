"""The ``registry-cache`` backend type: images pulled from OCI registries into a local store."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from crishim import hookimpl
from crishim.types import BackendContext, BackendType

from .options import RegistryCacheOptions

if TYPE_CHECKING:
    from .backend import RegistryCacheBackend


def _build(context: BackendContext, options: RegistryCacheOptions) -> RegistryCacheBackend:
    # Imported here: the HTTP stack costs ~150 ms at every start otherwise,
    # also for configs that use no registry-cache backend.
    from .backend import RegistryCacheBackend

    return RegistryCacheBackend(context, options)


@hookimpl
def crishim_backend_types() -> Iterable[BackendType]:
    return [
        BackendType(
            name="registry-cache",
            factory=_build,
            options_model=RegistryCacheOptions,
            description="pulls images from OCI distribution registries into a local store",
        )
    ]


__all__ = ["RegistryCacheOptions", "crishim_backend_types"]


def __getattr__(name: str) -> Any:
    if name == "RegistryCacheBackend":
        from .backend import RegistryCacheBackend

        return RegistryCacheBackend
    raise AttributeError(name)
