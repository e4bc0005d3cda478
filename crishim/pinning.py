"""Pinning: which images the CRI reports as pinned (``Image.pinned``).

The config's ``pinned`` list names images (normalised exact references, or
prefixes ending in ``*``); :class:`PinnedPolicy` decides from it. The
catalog sets ``Image.pinned`` when it says so or the backend's own record
does (containerd's CRI pin label); backends that name images in a store of
their own get :meth:`PinnedPolicy.matches` as ``BackendContext.is_pinned``.
"""

from __future__ import annotations

from collections.abc import Iterable

from crishim.model import ImageRecord

__all__ = ["PinnedPolicy"]


class PinnedPolicy:
    """Decides ``Image.pinned`` from exact names and ``prefix*`` patterns."""

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        self.exact = frozenset(p for p in patterns if not p.endswith("*"))
        self.prefixes = tuple(p[:-1] for p in patterns if p.endswith("*"))

    def __bool__(self) -> bool:
        return bool(self.exact or self.prefixes)

    def is_pinned(self, record: ImageRecord) -> bool:
        return self.matches((*record.repo_tags, *record.repo_digests))

    def matches(self, names: Iterable[str]) -> bool:
        """Whether any of these normalised names is pinned."""
        return any(name in self.exact or name.startswith(self.prefixes) for name in names)
