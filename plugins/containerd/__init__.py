"""The containerd backend: crishim in front of containerd's own image store."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from crishim import hookimpl
from crishim.types import BackendContext, BackendType

from .options import ContainerdOptions

if TYPE_CHECKING:
    from .backend import ContainerdBackend


def _build(context: BackendContext, options: ContainerdOptions) -> ContainerdBackend:
    # Imported here: gRPC stubs and the HTTP stack cost start-up time for
    # configs that use no containerd backend.
    from .backend import ContainerdBackend

    return ContainerdBackend(context, options)


@hookimpl
def crishim_backend_types() -> Iterable[BackendType]:
    return [
        BackendType(
            name="containerd",
            factory=_build,
            options_model=ContainerdOptions,
            description="serves and pulls into containerd's own image store (its gRPC API)",
        )
    ]


__all__ = ["ContainerdOptions", "crishim_backend_types"]


def __getattr__(name: str) -> Any:
    if name == "ContainerdBackend":
        from .backend import ContainerdBackend

        return ContainerdBackend
    raise AttributeError(name)
