"""Allow and deny pulls by repository pattern, per namespace; require digests.

Patterns match the normalised repository a pull names (``domain/path``,
no tag or digest: ``docker.io/library/busybox``), as path globs: ``*``
within one path segment, ``**`` across any number of them, ``{a,b}`` either.
A pattern without wildcards is normalised as an image name (``busybox``
is ``docker.io/library/busybox``); one with wildcards must start with its
registry.

The top-level rules judge every pull; a pull for a pod whose namespace has
an entry under ``namespaces`` must satisfy that entry's rules too. In each,
a denied pattern wins over an allowed one, and a non-empty ``allow`` admits
only what it matches.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from wcmatch import glob

from crishim.reference import ReferenceError, RefKind, parse
from crishim.types import ALLOW, Decision, PolicyContext, PolicyOptions, PullRequest

#: Path globs: ``**`` spans segments, ``{a,b}`` alternates, a leading dot is not special.
FLAGS = glob.GLOBSTAR | glob.BRACE | glob.DOTGLOB
_WILDCARDS = frozenset("*?[{")
#: How many allowed patterns a denial lists before "...".
SHOWN_PATTERNS = 5


def _pattern(value: str) -> str:
    text = value.strip()
    if not text:
        raise ValueError("an empty pattern matches nothing")
    if "@" in text:
        raise ValueError(f"{text!r}: patterns match repositories; leave the digest out")
    if ":" in text.rpartition("/")[2]:
        raise ValueError(f"{text!r}: patterns match repositories, not tags; leave the tag out")
    if not _WILDCARDS.intersection(text):
        try:
            ref = parse(text)
        except ReferenceError as exc:
            raise ValueError(str(exc)) from None
        if ref.kind is not RefKind.NAME:
            raise ValueError(f"{text!r} is an image ID, not a repository")
        return ref.repository
    first = text.split("/", 1)[0]
    if not ("." in first or ":" in first or first == "localhost" or _WILDCARDS & set(first)):
        raise ValueError(
            f"{text!r}: start a pattern with its registry (docker.io/{text}, or "
            f"registry.example.com/{text})"
        )
    try:
        glob.compile(text, flags=FLAGS)
    except Exception as exc:  # wcmatch raises plain ValueErrors and friends
        raise ValueError(f"{text!r} is not a valid pattern: {exc}") from None
    return text


Pattern = Annotated[str, AfterValidator(_pattern)]


class Rules(BaseModel):
    """One scope's rules: every pull (top level), or a namespace's pods."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Repositories pulls may come from; empty: any not denied.
    allow: list[Pattern] = Field(default_factory=list)
    #: Repositories pulls may never come from (wins over ``allow``).
    deny: list[Pattern] = Field(default_factory=list)
    #: Pulls must name a digest (``name@sha256:...``, or ``name:tag@sha256:...``);
    #: a pull by tag is FAILED_PRECONDITION.
    require_digest: bool = False


class RegistryPolicyOptions(Rules, PolicyOptions):
    """The top-level rules, and more rules per Kubernetes namespace."""

    #: Rules for pods of a namespace (by exact name), on top of the top-level ones.
    namespaces: dict[str, Rules] = Field(default_factory=dict)


class _Scope:
    """Compiled rules, and where they apply (for messages)."""

    def __init__(self, rules: Rules, where: str) -> None:
        self.where = where
        self.allow = [(p, glob.compile(p, flags=FLAGS)) for p in rules.allow]
        self.deny = [(p, glob.compile(p, flags=FLAGS)) for p in rules.deny]
        self.require_digest = rules.require_digest

    def judge(self, repository: str, digest: str) -> Decision:
        for pattern, matcher in self.deny:
            if matcher.match(repository):
                return Decision.deny(f"{repository} matches denied pattern {pattern!r}{self.where}")
        if self.allow and not any(matcher.match(repository) for _, matcher in self.allow):
            shown = ", ".join(repr(p) for p, _ in self.allow[:SHOWN_PATTERNS])
            more = ", ..." if len(self.allow) > SHOWN_PATTERNS else ""
            return Decision.deny(
                f"{repository} matches none of the allowed patterns{self.where} ({shown}{more})"
            )
        if self.require_digest and not digest:
            return Decision.precondition(
                f"pulls must name a digest{self.where}: pull {repository}@sha256:..."
            )
        return ALLOW


class RegistryPolicy:
    """The ``registry-policy`` pull policy: judges requests, never fetches."""

    def __init__(self, context: PolicyContext, options: RegistryPolicyOptions) -> None:
        self.name = context.name
        self.top = _Scope(options, "")
        self.namespaces = {
            namespace: _Scope(rules, f" in namespace {namespace}")
            for namespace, rules in options.namespaces.items()
        }

    def check_request(self, request: PullRequest) -> Decision:
        ref = request.ref
        if ref.kind is not RefKind.NAME:
            return ALLOW  # an image ID names content already held; nothing is fetched
        decision = self.top.judge(ref.repository, ref.digest)
        if not decision.allowed or request.pod is None:
            return decision
        scope = self.namespaces.get(request.pod.namespace)
        return decision if scope is None else scope.judge(ref.repository, ref.digest)
