"""The ``embedded-filter`` filter type: the CRI sees OCI-compliant images only.

Part of the default filter chain (used when the config has no ``filters``
key) with ``require_config: false``; see docs/plugins.md.
"""

from __future__ import annotations

from collections.abc import Iterable

from crishim import hookimpl
from crishim.types import FilterType

from .filter import EmbeddedFilter, EmbeddedFilterOptions


@hookimpl
def crishim_filter_types() -> Iterable[FilterType]:
    return [
        FilterType(
            name="embedded-filter",
            factory=EmbeddedFilter,
            options_model=EmbeddedFilterOptions,
            description="hides embedded (iSulad) and other non-OCI-compliant images",
            # Backends that carry no config blob keep working when the
            # operator has not asked for the strict check.
            default_chain_options={"require_config": False},
        )
    ]


__all__ = ["EmbeddedFilter", "EmbeddedFilterOptions", "crishim_filter_types"]
