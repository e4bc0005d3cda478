"""Filters, as the catalog applies them: the configured chain and one verdict per record.

Filters judge every record a backend returns, in the configured order; the
first that hides a record decides, and the verdict is kept with the record
(records are immutable), so each record is judged once. A filter that
raises, or answers something else than a :class:`~crishim.types.Verdict`,
hides the record. What a hidden record means for each call (absent for
ImageStatus and RemoveImage, left out of lists unless ``listed``) is the
catalog's (:mod:`crishim.catalog`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from crishim import logs
from crishim.model import ImageRecord
from crishim.types import VISIBLE, Filter, Verdict

if TYPE_CHECKING:
    from crishim.telemetry.spans import PluginTelemetry

__all__ = ["FilterChain", "FilterHandle"]

#: The catalog's logger: which filter hid what is part of its debug story.
log = logging.getLogger("crishim.catalog")


@dataclass(frozen=True)
class FilterHandle:
    """A configured filter instance: its config name, its type, the object."""

    name: str
    type: str
    filter: Filter


class FilterChain:
    """The configured filters, in order; one verdict per record, kept with it.

    Records are immutable, so a record is judged the first time it is seen
    and the verdict stored in ``record.cache`` under a key private to this
    chain. The first filter that hides a record decides. A filter that
    raises (or returns something else than a Verdict) hides the record: it
    could not be shown to be fit for the CRI; the error is logged once.
    """

    def __init__(
        self, filters: Sequence[FilterHandle], telemetry: PluginTelemetry | None = None
    ) -> None:
        self.filters = tuple(filters)
        self.telemetry = telemetry
        self._key = object()

    def verdict(self, record: ImageRecord) -> Verdict:
        verdict: Verdict | None = record.cache.get(self._key)
        if verdict is None:
            verdict = record.cache[self._key] = self._judge(record)
        return verdict

    def hides(self, record: ImageRecord, backend: str, asked: object) -> bool:
        """True when ``record`` is hidden; says why at debug level."""
        verdict: Verdict | None = record.cache.get(self._key)
        if verdict is None:
            verdict = self.verdict(record)
        if verdict.hidden:
            logs.note_hidden(verdict.filter)
            log.debug(
                "image %s (asked as %s) from backend %s is hidden by filter %s: %s",
                record.id,
                asked,
                backend,
                verdict.filter,
                verdict.reason,
            )
        return verdict.hidden

    def _judge(self, record: ImageRecord) -> Verdict:
        for handle in self.filters:
            check: Callable[[ImageRecord], Verdict] = handle.filter.check
            if self.telemetry is not None:
                check = self.telemetry.wrap(handle.name, handle.type, "check", check, kind="filter")
            try:
                verdict = check(record)
                if not isinstance(verdict, Verdict):
                    raise TypeError(f"check returned {type(verdict).__name__}, not a Verdict")
            except Exception as exc:
                log.exception(
                    "filter %s failed on image %s; hiding the image", handle.name, record.id
                )
                return Verdict(True, f"filter {handle.name} failed: {exc!r}", filter=handle.name)
            if verdict.hidden:
                return replace(verdict, filter=handle.name)
        return VISIBLE

    def listable(self, record: ImageRecord, backend: str) -> bool:
        """Whether ListImages and StreamImages show ``record`` (hidden and not ``listed``: no)."""
        verdict = self.verdict(record)
        if verdict.hidden and not verdict.listed:
            log.debug(
                "list: image %s from backend %s is hidden by filter %s: %s",
                record.id,
                backend,
                verdict.filter,
                verdict.reason,
            )
            return False
        return True
