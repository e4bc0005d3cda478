"""The ``cri`` backend type: every call forwarded to another CRI image service.

CRI-O, containerd's CRI plugin or another crishim keep their own store;
crishim puts its tracing, filters and pins in front of it. Nothing is
cached: the upstream is the truth.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from crishim import hookimpl
from crishim.types import BackendContext, BackendType

from .options import CriOptions

if TYPE_CHECKING:
    from .backend import CriBackend


def _build(context: BackendContext, options: CriOptions) -> CriBackend:
    # Imported here, as registry-cache does: configs without a cri backend
    # pay nothing for it.
    from .backend import CriBackend

    return CriBackend(context, options)


@hookimpl
def crishim_backend_types() -> Iterable[BackendType]:
    return [
        BackendType(
            name="cri",
            factory=_build,
            options_model=CriOptions,
            description="forwards every call to another CRI image service (CRI-O, containerd)",
        )
    ]


__all__ = ["CriOptions", "crishim_backend_types"]


def __getattr__(name: str) -> Any:
    if name == "CriBackend":
        from .backend import CriBackend

        return CriBackend
    raise AttributeError(name)
