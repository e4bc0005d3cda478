"""Pull policies: what a policy type registers, what an instance implements and is told.

Re-exported by :mod:`crishim.types`, which is where plugins import them from.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from opentelemetry import trace
from pydantic import BaseModel, ConfigDict

from crishim.reference import Reference
from crishim.types.pull import PullRequest

if TYPE_CHECKING:
    from crishim.registry.puller import ImageSource


@dataclass(frozen=True, slots=True)
class Decision:
    """A pull policy's answer: allowed, or denied with a reason for the client.

    A denial is PERMISSION_DENIED, or FAILED_PRECONDITION with
    ``status="failed_precondition"`` (the request could be allowed if it
    were made differently: by digest, say). The reason goes into the gRPC
    message as it is: never put a secret in it.

    Example::

        >>> Decision.deny("registry evil.example is not allowed").allowed
        False
        >>> Decision.precondition("pull by digest").status
        'failed_precondition'
        >>> ALLOW.allowed
        True
    """

    allowed: bool = True
    reason: str = ""
    status: Literal["permission_denied", "failed_precondition"] = "permission_denied"

    @classmethod
    def deny(cls, reason: str) -> Decision:
        """Refused: PERMISSION_DENIED."""
        return cls(False, reason)

    @classmethod
    def precondition(cls, reason: str) -> Decision:
        """Refused as asked: FAILED_PRECONDITION."""
        return cls(False, reason, "failed_precondition")


#: The decision of a policy that has no objection (one shared object).
ALLOW = Decision()


@dataclass(frozen=True)
class ResolvedImage:
    """What a pull is about to make visible, for :class:`ImagePolicy`.

    ``digest`` is what the reference resolved to (an index or a manifest):
    the digest signatures are made over, and what a re-pull by digest
    names. ``source`` reads more from the same registry with the pull's own
    credentials and deadline (``source.resolve("sha256-<hex>.sig", None)``
    fetches a cosign signature manifest, ``source.blob(...)`` its layers);
    it is None when the image did not come through crishim's registry
    client (a backend pulling through another runtime): then only the
    digests are known.

    Example::

        def check_image(self, request, image):
            if image.digest not in self.trusted_digests:
                return Decision.deny(f"{request.ref} resolved to {image.digest}, not trusted")
            return ALLOW
    """

    ref: Reference
    digest: str
    media_type: str
    #: The platform's manifest (``digest`` itself unless that is an index).
    manifest_digest: str = ""
    manifest: Mapping[str, Any] = field(default_factory=dict)
    #: The image's config digest: its CRI image ID (an artifact's: its manifest digest).
    image_id: str = ""
    #: Set for OCI artifacts (image volumes): the artifact type.
    artifact_type: str = ""
    source: ImageSource | None = field(default=None, compare=False)
    #: Reads the image config (JSON, checked against its digest); fetched on
    #: first use, so policies that do not look cost nothing.
    read_config: Callable[[], Mapping[str, Any]] = field(
        default=lambda: {}, compare=False, repr=False
    )


class PolicyOptions(BaseModel):
    """Base for a pull policy type's options; unknown keys are config errors.

    Example::

        class AllowlistOptions(PolicyOptions):
            registries: list[str]  # pull_policies[i].options.registries
    """

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class PolicyContext:
    """What crishim tells a pull policy instance about where it runs.

    The first argument of every pull policy factory.

    Example::

        class Allowlist:
            def __init__(self, context, options):
                self.name = context.name
                self.tracer = context.tracer_provider.get_tracer(__name__)
    """

    #: The instance name from the config file (unique among pull policies).
    name: str
    #: The directory of the config file; relative paths in options resolve here.
    config_dir: Path
    #: Where the policy gets tracers for spans of its own (a no-op unless tracing is on).
    tracer_provider: trace.TracerProvider = field(default_factory=trace.NoOpTracerProvider)


@runtime_checkable
class PullPolicy(Protocol):
    """Judges a pull from its request, before anything is fetched.

    ``check_request`` runs once per PullImage (and ``crishim pull``), from
    any thread, before the pulling backend is asked; it must be quick. The
    request carries the reference, the runtime handler, the pod
    (``request.pod``) and ``user_specified_image``; never log ``auth``.

    Example::

        class Allowlist:
            def __init__(self, context, options):
                self.registries = frozenset(options.registries)

            def check_request(self, request):
                if request.ref.domain not in self.registries:
                    return Decision.deny(f"registry {request.ref.domain} is not allowed")
                return ALLOW
    """

    def check_request(self, request: PullRequest) -> Decision: ...


@runtime_checkable
class ImagePolicy(Protocol):
    """Judges a pull once it is resolved, before the image is made visible.

    ``check_image`` runs once per pull, after the manifest is resolved and
    before any layer is stored as part of the image, with the digest and
    the means to fetch more (signatures, attestations). It may do I/O
    within its ``timeout``. A policy class may offer both checks.

    Example::

        class PinnedDigests:
            def check_image(self, request, image):
                if image.digest != self.expected.get(request.ref.repository, image.digest):
                    return Decision.deny(f"{request.ref} is not the pinned {image.digest}")
                return ALLOW
    """

    def check_image(self, request: PullRequest, image: ResolvedImage) -> Decision: ...


@dataclass(frozen=True)
class PullPolicyType:
    """A kind of pull policy a plugin offers, e.g. ``registry-policy``.

    What the ``crishim_pull_policy_types`` hook returns.

    Example::

        @hookimpl
        def crishim_pull_policy_types():
            return [PullPolicyType(name="allowlist", factory=Allowlist, options_model=Options)]
    """

    #: The ``type`` used in the config file's ``pull_policies`` list.
    name: str
    #: Called once per configured instance: ``factory(context, options)``;
    #: returns a :class:`PullPolicy`, an :class:`ImagePolicy` or both.
    factory: Callable[[PolicyContext, Any], object]
    #: Validates the instance's ``options`` mapping.
    options_model: type[PolicyOptions] = PolicyOptions
    description: str = ""
    #: Filled in by crishim: the distribution that registered the type.
    package: str = field(default="", compare=False)
    version: str = field(default="", compare=False)
