"""Pull policies for tests: they record what they are asked and answer as told."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from cri_helpers import FAKE_PLUGINS

from crishim import hookimpl
from crishim.types import (
    ALLOW,
    Decision,
    PolicyContext,
    PolicyOptions,
    PullPolicyType,
    PullRequest,
    ResolvedImage,
)

Mode = Literal["allow", "deny", "precondition", "raise", "hang", "wrong", "inspect"]
#: What the "raise" mode's exception says: it must never reach a client.
SECRET = "s3cr3t-token-in-an-exception"


class RecordingOptions(PolicyOptions):
    mode: Mode = "allow"


class Recording:
    """What a test policy was asked, and (``inspect``) what it read of the image."""

    instances: ClassVar[dict[str, Recording]] = {}
    release: ClassVar[threading.Event] = threading.Event()

    def __init__(self, context: PolicyContext, options: RecordingOptions) -> None:
        self.mode = options.mode
        self.requests: list[PullRequest] = []
        self.images: list[ResolvedImage] = []
        self.configs: list[Mapping[str, Any]] = []
        self.resolved: list[str] = []
        Recording.instances[context.name] = self

    def _answer(self) -> Decision:
        mode = self.mode
        if mode == "deny":
            return Decision.deny("not on this node")
        if mode == "precondition":
            return Decision.precondition("ask again by digest")
        if mode == "raise":
            raise RuntimeError(SECRET)
        if mode == "hang":
            Recording.release.wait(10)
        if mode == "wrong":
            return "yes"  # type: ignore[return-value]
        return ALLOW


class RequestPolicy(Recording):
    def check_request(self, request: PullRequest) -> Decision:
        self.requests.append(request)
        return self._answer()


class ImageCheck(Recording):
    def check_image(self, request: PullRequest, image: ResolvedImage) -> Decision:
        self.requests.append(request)
        self.images.append(image)
        if self.mode == "inspect":
            self.configs.append(image.read_config())
            assert image.source is not None
            self.resolved.append(image.source.resolve("1", None).digest)
        return self._answer()


class _Plugin:
    @hookimpl
    def crishim_pull_policy_types(self) -> list[PullPolicyType]:
        return [
            PullPolicyType("test-request", RequestPolicy, RecordingOptions),
            PullPolicyType("test-image", ImageCheck, RecordingOptions),
        ]


#: The test policy types (``test-request``, ``test-image``) and the fake backend.
PLUGINS = [("test-policies", _Plugin()), *FAKE_PLUGINS]
