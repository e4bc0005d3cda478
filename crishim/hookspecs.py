"""The plugin contract: every hook crishim calls, documented for plugin authors.

A plugin is a module (or object) registered through the entry-point group
``crishim.plugins``; it implements hooks by decorating functions with
:data:`crishim.hookimpl`. Hooks *register* things; they are called once at
start-up, never per CRI call. The per-call work happens in the objects they
register (see :class:`crishim.types.Backend`).
"""

from __future__ import annotations

from collections.abc import Iterable

import pluggy

from crishim.types import BackendType

PROJECT = "crishim"

_hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@_hookspec
def crishim_backend_types() -> Iterable[BackendType]:  # type: ignore[empty-body]
    """Offer backend types that configs can name in ``backends[].type``.

    Return an iterable of :class:`crishim.types.BackendType`. A type name
    claimed by two plugins is a start-up error.

    Example::

        from crishim import hookimpl
        from crishim.types import BackendType

        @hookimpl
        def crishim_backend_types():
            return [BackendType(name="json-catalog", factory=JsonCatalog,
                                options_model=JsonCatalogOptions)]
    """
