"""What plugins give crishim and what crishim gives plugins.

A plugin module implements the ``crishim_backend_types`` hook (see
:mod:`crishim.hookspecs`) and returns :class:`BackendType` values. The
container validates each configured instance's ``options`` with the type's
``options_model`` and calls ``factory(context, options)`` once per instance;
the returned object must follow the :class:`Backend` protocol. Subclassing
:class:`IndexedBackend` gives the lookups for free: build
:class:`~crishim.model.ImageRecord` objects, hand them to ``publish``.

Filters are offered the same way (``crishim_filter_types`` returns
:class:`FilterType` values); a :class:`Filter` gives each image record a
:class:`Verdict`. Pull policies too (``crishim_pull_policy_types`` returns
:class:`PullPolicyType` values): a :class:`PullPolicy` gives each pull a
:class:`Decision` before anything is fetched, an :class:`ImagePolicy` again
once the pull has resolved what it fetches (:class:`ResolvedImage`).

A backend that pulls also follows :class:`Puller` (and, to load files with
``crishim import``, :class:`Importer`): the catalog recognises it by its
``pull_image`` method, asks the first such backend configured, and what
that backend raises is the pull's answer (docs/plugins.md, "The pulling
contract").

The names live in four modules by kind (``backend``, ``pull``, ``filter``,
``policy``); import them from here, the one place the promise of docs/api.md
is made for.
"""

from __future__ import annotations

from crishim.types.backend import (
    Backend,
    BackendContext,
    BackendOptions,
    BackendType,
    HandlerAware,
    IndexedBackend,
)
from crishim.types.filter import VISIBLE, Filter, FilterContext, FilterOptions, FilterType, Verdict
from crishim.types.policy import (
    ALLOW,
    Decision,
    ImagePolicy,
    PolicyContext,
    PolicyOptions,
    PullPolicy,
    PullPolicyType,
    ResolvedImage,
)
from crishim.types.pull import (
    Importer,
    ImportRequest,
    PodContext,
    PullAuth,
    Puller,
    PullProgress,
    PullRequest,
)

__all__ = [
    "ALLOW",
    "VISIBLE",
    "Backend",
    "BackendContext",
    "BackendOptions",
    "BackendType",
    "Decision",
    "Filter",
    "FilterContext",
    "FilterOptions",
    "FilterType",
    "HandlerAware",
    "ImagePolicy",
    "ImportRequest",
    "Importer",
    "IndexedBackend",
    "PodContext",
    "PolicyContext",
    "PolicyOptions",
    "PullAuth",
    "PullPolicy",
    "PullPolicyType",
    "PullProgress",
    "PullRequest",
    "Puller",
    "ResolvedImage",
    "Verdict",
]
