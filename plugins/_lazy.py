"""Built-in backend types whose module loads when the first instance is built.

The ``registry-cache``, ``containerd`` and ``cri`` backends need the HTTP
stack or gRPC stubs of their own, which cost start-up time (about 150 ms for
the HTTP stack) to every config that uses none of them. Each package's
``__init__`` is one :func:`lazy_backend` call: the registration hook, and a
module ``__getattr__`` so that ``from crishim_plugins.cri import
CriBackend`` still works.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any

from crishim import hookimpl
from crishim.types import Backend, BackendContext, BackendOptions, BackendType

Hook = Callable[[], Iterable[BackendType]]


def lazy_backend(
    name: str, package: str, cls: str, options_model: type[BackendOptions], description: str
) -> tuple[Hook, Callable[[str], Any]]:
    """``crishim_backend_types`` and ``__getattr__`` for the package ``package``, whose
    ``backend`` module holds ``cls``, the backend type ``name``."""
    module = f"{package}.backend"

    def build(context: BackendContext, options: Any) -> Backend:
        factory: Callable[[BackendContext, Any], Backend]
        factory = getattr(importlib.import_module(module), cls)
        return factory(context, options)

    backend_type = BackendType(name, build, options_model, description)

    @hookimpl
    def crishim_backend_types() -> Iterable[BackendType]:
        return [backend_type]

    def __getattr__(attribute: str) -> Any:
        if attribute == cls:
            return getattr(importlib.import_module(module), cls)
        raise AttributeError(attribute)

    return crishim_backend_types, __getattr__
