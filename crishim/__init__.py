"""crishim: a pluggable CRI image service.

A plugin imports :data:`hookimpl` from here and decorates its hook
implementations with it (docs/hooks.md); everything else it builds on is
in the modules below (docs/api.md says which are public).
"""

from crishim.hookspecs import hookimpl

__all__ = ["__version__", "hookimpl"]

#: The installed crishim's version; plugins depend on ``crishim>=0.1,<0.2``.
__version__ = "0.1.0"
