"""crishim: a pluggable CRI image service.

A plugin imports :data:`hookimpl` from here and decorates its hook
implementations with it (docs/hooks.md); everything else it builds on is
in the modules below (docs/api.md says which are public).

The root hands on the marker and the version, nothing else: ``hookimpl``
is looked up on first use (it is pluggy's), so importing a pure module
such as :mod:`crishim.reference` or :mod:`crishim.model` loads neither
pluggy nor pydantic, OpenTelemetry or grpc (tests/test_layering.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from crishim.hookspecs import hookimpl

__all__ = ["__version__", "hookimpl"]

#: The installed crishim's version; plugins depend on ``crishim>=0.1,<0.2``.
__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    if name == "hookimpl":
        from crishim.hookspecs import hookimpl

        return hookimpl
    raise AttributeError(f"module 'crishim' has no attribute {name!r}")
