"""crishim: a pluggable CRI image service."""

from crishim.hookspecs import hookimpl

__all__ = ["__version__", "hookimpl"]

__version__ = "0.1.0"
