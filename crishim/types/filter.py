"""Filters: what a filter type registers, what an instance implements and is told.

Re-exported by :mod:`crishim.types`, which is where plugins import them from.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from crishim.model import ImageRecord


@dataclass(frozen=True, slots=True)
class Verdict:
    """A filter's judgement of one image record.

    A hidden image is absent for ImageStatus (OK, ``image`` unset) and
    RemoveImage (OK, nothing removed); ListImages and StreamImages leave it
    out unless ``listed`` is set.

    Example::

        def check(self, record):
            if any(tag.endswith(":latest") for tag in record.repo_tags):
                return Verdict(hidden=True, reason="tagged latest")
            return VISIBLE
    """

    #: True: the CRI must not see the image.
    hidden: bool = False
    #: Why the image is hidden; logged at debug level on every call that hides it.
    reason: str = ""
    #: Still listed by ListImages/StreamImages although hidden.
    listed: bool = False
    #: The configured filter instance that hid the image; set by crishim.
    filter: str = ""


#: The verdict of a filter that has no objection (one shared object).
VISIBLE = Verdict()


class FilterOptions(BaseModel):
    """Base for a filter type's options; unknown keys are config errors.

    Example::

        class NoLatestOptions(FilterOptions):
            list_hidden: bool = False  # filters[i].options.list_hidden
    """

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class FilterContext:
    """What crishim tells a filter instance about where it runs.

    The first argument of every filter factory.

    Example::

        class Allowlist:
            def __init__(self, context, options):
                path = context.config_dir / options.file  # relative to the config file
                self.allowed = frozenset(path.read_text().split())
    """

    #: The instance name from the config file (unique among filters).
    name: str
    #: The directory of the config file; relative paths in options resolve here.
    config_dir: Path


@runtime_checkable
class Filter(Protocol):
    """One configured filter instance, as the catalog calls it.

    ``check`` is called once per image record (records are immutable; the
    verdict is kept with the record), from any thread. It must not do I/O:
    judge from the record alone. A ``check`` that raises, or returns
    something else than a :class:`Verdict`, hides the record.

    Example::

        class NoLatest:
            def __init__(self, context, options):
                self.list_hidden = options.list_hidden

            def check(self, record):
                if any(tag.endswith(":latest") for tag in record.repo_tags):
                    return Verdict(hidden=True, reason="tagged latest", listed=self.list_hidden)
                return VISIBLE
    """

    def check(self, record: ImageRecord) -> Verdict: ...


@dataclass(frozen=True)
class FilterType:
    """A kind of filter a plugin offers, e.g. ``embedded-filter``.

    What the ``crishim_filter_types`` hook returns.

    Example::

        @hookimpl
        def crishim_filter_types():
            return [FilterType(name="no-latest", factory=NoLatest, options_model=NoLatestOptions)]
    """

    #: The ``type`` used in the config file's ``filters`` list.
    name: str
    #: Called once per configured instance: ``factory(context, options)``.
    factory: Callable[[FilterContext, Any], Filter]
    #: Validates the instance's ``options`` mapping.
    options_model: type[FilterOptions] = FilterOptions
    description: str = ""
    #: Not None: when the config has no ``filters`` key, an instance of this
    #: type named after it, with these options, is part of the default chain
    #: (default-chain types run in name order). Only for filters that enforce
    #: the CRI contract itself.
    default_chain_options: Mapping[str, Any] | None = None
    #: Filled in by crishim: the distribution that registered the type.
    package: str = field(default="", compare=False)
    version: str = field(default="", compare=False)
