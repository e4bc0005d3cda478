"""The ``registry-policy`` pull policy type: which registries and repositories
a node pulls from, optionally per Kubernetes namespace, and whether pulls
must name a digest. See docs/policies.md.
"""

from __future__ import annotations

from collections.abc import Iterable

from crishim import hookimpl
from crishim.types import PullPolicyType

from .policy import RegistryPolicy, RegistryPolicyOptions, Rules


@hookimpl
def crishim_pull_policy_types() -> Iterable[PullPolicyType]:
    return [
        PullPolicyType(
            name="registry-policy",
            factory=RegistryPolicy,
            options_model=RegistryPolicyOptions,
            description="allowed and denied registries/repositories (globs), per namespace; "
            "require_digest",
        )
    ]


__all__ = ["RegistryPolicy", "RegistryPolicyOptions", "Rules", "crishim_pull_policy_types"]
