"""The plugin contract: every hook crishim calls, documented for plugin authors.

A plugin is a module (or object) registered through the entry-point group
``crishim.plugins``; it implements hooks by decorating functions with
:data:`crishim.hookimpl`. Hooks *register* things; they are called once at
start-up, never per CRI call. The per-call work happens in the objects they
register (see :class:`crishim.types.Backend`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:  # annotations only: ``from crishim import hookimpl`` loads pluggy alone
    from crishim.types import BackendType, FilterType, PullPolicyType

PROJECT = "crishim"

_hookspec = pluggy.HookspecMarker(PROJECT)
#: The decorator of hook implementations (``from crishim import hookimpl``):
#: a function named after a hook of this module, decorated with it, is that
#: hook's implementation; a misspelt name is reported and its plugin left out.
hookimpl = pluggy.HookimplMarker(PROJECT)


@_hookspec
def crishim_backend_types() -> Iterable[BackendType]:  # type: ignore[empty-body]
    """Offer backend types that configs can name in ``backends[].type``.

    Return an iterable of :class:`crishim.types.BackendType`. A type name
    claimed by two plugins is a start-up error.

    Example::

        from crishim import hookimpl
        from crishim.types import BackendType


        @hookimpl
        def crishim_backend_types():
            return [
                BackendType(
                    name="json-images",
                    factory=JsonImages,
                    options_model=JsonImagesOptions,
                )
            ]
    """


@_hookspec
def crishim_filter_types() -> Iterable[FilterType]:  # type: ignore[empty-body]
    """Offer filter types that configs can name in ``filters[].type``.

    Return an iterable of :class:`crishim.types.FilterType`. The factory
    builds a :class:`crishim.types.Filter` whose ``check(record)`` returns a
    :class:`crishim.types.Verdict`; the catalog asks it once per image record
    and hides what it vetoes from ImageStatus, ListImages, StreamImages and
    RemoveImage. A type name claimed by two plugins is a start-up error.

    Example::

        from crishim import hookimpl
        from crishim.types import VISIBLE, FilterType, Verdict


        class NoLatest:
            def __init__(self, context, options):
                pass

            def check(self, record):
                if any(t.endswith(":latest") for t in record.repo_tags):
                    return Verdict(hidden=True, reason="tagged latest")
                return VISIBLE


        @hookimpl
        def crishim_filter_types():
            return [FilterType(name="no-latest", factory=NoLatest)]
    """


@_hookspec
def crishim_pull_policy_types() -> Iterable[PullPolicyType]:  # type: ignore[empty-body]
    """Offer pull policy types that configs can name in ``pull_policies[].type``.

    Return an iterable of :class:`crishim.types.PullPolicyType`. The factory
    builds an object with ``check_request(request)`` (a
    :class:`crishim.types.PullPolicy`, asked before anything is fetched),
    ``check_image(request, image)`` (an :class:`crishim.types.ImagePolicy`,
    asked once the pull resolved its manifest, before the image is visible),
    or both; each returns a :class:`crishim.types.Decision`. Every
    configured policy must allow a pull; the first denial ends it
    (PERMISSION_DENIED, or FAILED_PRECONDITION), its reason in the message.
    A policy that raises, times out or returns something else denies. A
    type name claimed by two plugins is a start-up error.

    Example::

        from crishim import hookimpl
        from crishim.types import ALLOW, Decision, PullPolicyType


        class NoLatest:
            def __init__(self, context, options):
                pass

            def check_request(self, request):
                if request.ref.tag == "latest" and not request.ref.digest:
                    return Decision.precondition("pull a version, not latest")
                return ALLOW


        @hookimpl
        def crishim_pull_policy_types():
            return [PullPolicyType(name="no-latest", factory=NoLatest)]
    """
