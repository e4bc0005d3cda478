"""The options of a ``containerd`` backend, validated at start-up.

Registries, timeouts and downloads are :class:`crishim.registry.options.PullOptions`,
the same section ``registry-cache`` has; what is containerd's own is where
to reach it and which namespace to serve.
"""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from crishim.registry.options import PullOptions

DEFAULT_ADDRESS = "unix:///run/containerd/containerd.sock"
#: The namespace containerd's CRI plugin serves.
DEFAULT_NAMESPACE = "k8s.io"
# containerd's namespace grammar: labels of [a-z0-9-_], dot-separated
_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$")


class ContainerdOptions(PullOptions):
    #: containerd's gRPC socket: ``unix:///path`` (or a bare absolute path).
    address: str = DEFAULT_ADDRESS
    #: The containerd namespace whose images are served and pulled into.
    namespace: str = DEFAULT_NAMESPACE
    #: Seconds a call to containerd may take (lookups never call it).
    call_timeout: float = Field(default=30.0, gt=0, le=600)
    #: Seconds between full re-lists of containerd's images, the safety net
    #: under the event stream.
    resync_interval: float = Field(default=60.0, gt=0, le=86400)
    #: Seconds a pull's lease protects its blobs from containerd's garbage
    #: collector if crishim dies mid-pull; a pull renews it as it goes.
    lease_ttl: float = Field(default=3600.0, ge=1, le=7 * 86400)
    #: Longest wait between reconnection attempts when containerd is away.
    max_reconnect_delay: float = Field(default=10.0, gt=0, le=600)
    #: Unpack pulled layers into ``snapshotter`` while the pull runs, as
    #: containerd's own pull does (else containerd unpacks at the first
    #: CreateContainer).
    unpack: bool = True
    #: The snapshotter containerd's CRI plugin creates containers with.
    snapshotter: str = Field(default="overlayfs", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    #: Seconds unpacking one layer may take.
    unpack_timeout: float = Field(default=600.0, gt=0, le=86400)

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        path = value.removeprefix("unix://")
        if "://" in path or not path.startswith("/"):
            raise ValueError("must be a unix socket such as unix:///run/containerd/containerd.sock")
        return f"unix://{path}"

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        if not _NAMESPACE_RE.match(value) or len(value) > 76:
            raise ValueError("is not a containerd namespace (letters, digits, '.', '_', '-')")
        return value

    @property
    def socket_path(self) -> str:
        return self.address.removeprefix("unix://")
