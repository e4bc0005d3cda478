"""The ``json-catalog`` backend type for crishim.

Serves, read-only, the images a JSON catalogue names, whose blobs another
program (a runtime, a sync job) keeps in a content-addressed directory.
Registered through the entry-point group ``crishim.plugins``; see README.md.
"""

from __future__ import annotations

from collections.abc import Iterable

from crishim import hookimpl
from crishim.types import BackendType

from .backend import JsonCatalogBackend, JsonCatalogOptions
from .catalog import CatalogError, CatalogImage, read_catalog

__version__ = "0.1.0"


@hookimpl
def crishim_backend_types() -> Iterable[BackendType]:
    return [
        BackendType(
            name="json-catalog",
            factory=JsonCatalogBackend,
            options_model=JsonCatalogOptions,
            description="images a JSON catalogue names, blobs in a store another program fills",
        )
    ]


__all__ = [
    "CatalogError",
    "CatalogImage",
    "JsonCatalogBackend",
    "JsonCatalogOptions",
    "crishim_backend_types",
    "read_catalog",
]
