"""The options of a ``registry-cache`` backend, validated at start-up.

Registries, timeouts and downloads are :class:`crishim.registry.PullOptions`,
shared with every pulling backend; what is the cache's own is its store.
"""

from __future__ import annotations

from pydantic import Field

from crishim.registry.options import PullOptions


class RegistryCacheOptions(PullOptions):
    #: The store directory (an OCI image layout); default ``<state_dir>/store``.
    path: str | None = None
    #: Seconds between checks for index.json changes made by another
    #: process (``crishim pull`` while the server runs).
    rescan_interval: float = Field(default=5.0, gt=0)
