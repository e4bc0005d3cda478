"""Pull policies: the configured ``pull_policies``, asked about every pull.

A pull goes through two checks, each asking every policy that offers it,
in config order, until one denies:

- ``check_request`` (:class:`~crishim.types.PullPolicy`), before the pulling
  backend is asked: nothing is fetched for a pull it denies;
- ``check_image`` (:class:`~crishim.types.ImagePolicy`), once the pull knows
  what it fetches (the backend calls ``PullRequest.admit`` with a
  :class:`~crishim.types.ResolvedImage`) and before the image is visible.

A denial is PERMISSION_DENIED or FAILED_PRECONDITION with the policy's
reason in the message. A policy that raises, returns something that is
not a :class:`~crishim.types.Decision`, or takes longer than its
``timeout``, cannot show the pull to be allowed: the pull fails
UNAVAILABLE (kubelet retries it) and the server goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crishim.errors import PermissionDenied, PreconditionFailed, Unavailable
from crishim.model import ImageRecord
from crishim.timed import BackendBusy, BackendTimeout, TimedCaller
from crishim.types import Decision, ImagePolicy, PullPolicy, PullRequest, ResolvedImage

if TYPE_CHECKING:
    from crishim.telemetry.spans import PluginTelemetry

log = logging.getLogger(__name__)

#: A denial's reason is cut to this many characters in the gRPC message.
MAX_REASON = 500


@dataclass(frozen=True)
class PolicyHandle:
    """One configured pull policy instance."""

    name: str
    type: str
    policy: object
    timeout: float = 10.0


class PolicyChain:
    """The configured pull policies, in order."""

    def __init__(
        self,
        policies: Sequence[PolicyHandle],
        telemetry: PluginTelemetry | None = None,
        workers: int = 4,
    ) -> None:
        self.policies = tuple(policies)
        self.telemetry = telemetry
        self._requests = [h for h in self.policies if isinstance(h.policy, PullPolicy)]
        self._images = [h for h in self.policies if isinstance(h.policy, ImagePolicy)]
        self._callers = {
            h.name: TimedCaller(f"policy-{h.name}", h.timeout, workers) for h in self.policies
        }
        self._failures: set[tuple[str, str]] = set()

    @property
    def checks_images(self) -> bool:
        """Whether some policy judges resolved images (``PullRequest.admit`` is set)."""
        return bool(self._images)

    def close(self) -> None:
        for caller in self._callers.values():
            caller.close()

    def check_request(self, request: PullRequest) -> None:
        """Ask every request policy; raises the first denial."""
        for handle in self._requests:
            self._ask(handle, "check_request", request, lambda p: p.check_request(request))

    def check_image(self, request: PullRequest, image: ResolvedImage) -> None:
        """Ask every image policy about what the pull resolved; raises the first denial."""
        for handle in self._images:
            self._ask(handle, "check_image", request, lambda p: p.check_image(request, image))

    def _ask(
        self,
        handle: PolicyHandle,
        what: str,
        request: PullRequest,
        check: Callable[[Any], Decision],
    ) -> None:
        if self.telemetry is not None:
            check = self.telemetry.wrap(handle.name, handle.type, what, check, kind="policy")
        pull = f"pull {request.ref}"
        try:
            decision = self._callers[handle.name].call(check, handle.policy)
        except Exception as exc:
            self._failed(handle, what, exc)
            raise Unavailable(
                f"{pull}: pull policy {handle.name} could not decide "
                f"({_failure(exc, self._callers[handle.name].timeout)}); the pull is refused"
            ) from None
        if not isinstance(decision, Decision):
            self._failed(handle, what, TypeError(f"{what} returned {type(decision).__name__}"))
            raise Unavailable(
                f"{pull}: pull policy {handle.name} answered {type(decision).__name__}, "
                "not a Decision; the pull is refused"
            )
        if decision.allowed:
            return
        reason = decision.reason.strip() or "no reason given"
        if len(reason) > MAX_REASON:
            reason = reason[: MAX_REASON - 3] + "..."
        message = f"{pull} is denied by pull policy {handle.name}: {reason}"
        log.info("%s", message)
        if decision.status == "failed_precondition":
            raise PreconditionFailed(message)
        raise PermissionDenied(message)

    def _failed(self, handle: PolicyHandle, what: str, exc: BaseException) -> None:
        """Log a policy's failure with its traceback once per (policy, kind), then briefly."""
        key = (handle.name, type(exc).__name__)
        if key in self._failures:
            log.warning(
                "pull policy %s: %s failed again: %s", handle.name, what, type(exc).__name__
            )
            return
        if len(self._failures) < 1000:
            self._failures.add(key)
        log.error("pull policy %s: %s failed; the pull is refused", handle.name, what, exc_info=exc)


def _failure(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, BackendTimeout):
        return f"no answer within {timeout}s"
    if isinstance(exc, BackendBusy):
        return "every worker is held by checks that have not returned"
    return f"it failed: {type(exc).__name__}"


def image_of_record(request: PullRequest, record: ImageRecord) -> ResolvedImage:
    """What is known of a pulled image from its record alone: for backends that
    did not call ``PullRequest.admit`` (their pull went elsewhere)."""
    ref = request.ref
    digest = ref.digest
    if not digest:
        prefix = f"{ref.repository}@"
        digest = next(
            (d.removeprefix(prefix) for d in record.repo_digests if d.startswith(prefix)), ""
        )
    return ResolvedImage(
        ref=ref,
        digest=digest,
        media_type="",
        image_id=record.id,
        artifact_type=record.artifact_type,
    )
