"""The domain model: plain Python, no protobuf, no gRPC.

Backends produce :class:`ImageRecord` objects; the catalog routes and merges
them; :mod:`crishim.service` turns them into CRI messages.
"""

from __future__ import annotations

import json
import platform as _platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = [
    "NO_ANNOTATIONS",
    "FilesystemUsage",
    "ImageRecord",
    "Platform",
    "host_platform",
    "split_user",
]

_EMPTY: Mapping[str, str] = MappingProxyType({})
#: The shared empty annotations mapping (one object for every record without any).
NO_ANNOTATIONS = _EMPTY


@dataclass(frozen=True, slots=True)
class Platform:
    """An OCI platform: what an image index is resolved to.

    ``BackendContext.platform`` is the configured one (``platform`` in the
    config, else :func:`host_platform`).

    Example::

        >>> platform = Platform("linux", "arm64", "v8")
        >>> str(platform)
        'linux/arm64/v8'
        >>> platform.matches("linux", "arm64")  # a descriptor without a variant fits
        True
        >>> platform.matches("linux", "amd64")
        False
    """

    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        parts = [self.os, self.architecture]
        if self.variant:
            parts.append(self.variant)
        return "/".join(parts)

    def matches(self, os: str, architecture: str, variant: str = "") -> bool:
        """True when a descriptor's platform fits this one.

        A descriptor without a variant fits any variant; ``arm64`` treats a
        missing variant and ``v8`` as the same thing, as containerd does.
        """
        if os != self.os or architecture != self.architecture:
            return False
        if not variant or not self.variant:
            return True
        if self.architecture == "arm64" and {variant, self.variant} <= {"v8", ""}:
            return True
        return variant == self.variant


_MACHINE_TO_OCI: dict[str, tuple[str, str]] = {
    "x86_64": ("amd64", ""),
    "amd64": ("amd64", ""),
    "aarch64": ("arm64", "v8"),
    "arm64": ("arm64", "v8"),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i386": ("386", ""),
    "i686": ("386", ""),
    "ppc64le": ("ppc64le", ""),
    "s390x": ("s390x", ""),
    "riscv64": ("riscv64", ""),
}


def host_platform() -> Platform:
    """The platform of the machine crishim runs on, in OCI terms.

    Example::

        >>> host_platform().os
        'linux'
    """
    machine = _platform.machine().lower()
    arch, variant = _MACHINE_TO_OCI.get(machine, (machine, ""))
    return Platform(os=_platform.system().lower() or "linux", architecture=arch, variant=variant)


def split_user(user: str) -> tuple[int | None, str]:
    """Split an image config ``User`` into (uid, username) as the CRI reports it.

    Only the part before ``:`` counts (the group is not reported). A numeric
    user gives a uid and an empty username; anything else gives a username
    and no uid; an empty user gives neither. ``ImageRecord.uid`` and
    ``ImageRecord.username`` come from here: a backend sets ``user`` only.

    Example::

        >>> split_user("1000:1000")
        (1000, '')
        >>> split_user("www-data:33")
        (None, 'www-data')
        >>> split_user("")
        (None, '')
    """
    name = user.split(":", 1)[0]
    if not name:
        return None, ""
    if name.isdigit():
        return int(name), ""
    return None, name


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """One image as a backend knows it.

    ``id`` is the config digest (``sha256:<hex>``). ``repo_tags`` are
    normalised ``name:tag`` strings and ``repo_digests`` normalised
    ``name@digest`` strings (the digest a name was published with: the
    manifest's, or the index's for a multi-platform image). ``size`` is the
    compressed size of the platform manifest, its config and its layers
    (the CRI's ``Image.size``; a backend with another rule documents it,
    and the contract kit checks the documented value). ``config`` defaults
    to empty: a record without config is answered with no ``imageSpec``
    in verbose info, and the embedded-filter's ``require_config`` hides
    it. Records are immutable and hashable by value; ``cache`` is crishim's.

    Example::

        >>> import hashlib, json
        >>> config = json.dumps({"config": {"User": "1000:1000"}}).encode()
        >>> record = ImageRecord(
        ...     id="sha256:" + hashlib.sha256(config).hexdigest(),
        ...     repo_tags=("docker.io/library/busybox:1.36",),
        ...     size=2_220_000,
        ...     user="1000:1000",
        ...     config=config,
        ... )
        >>> record.uid, record.username
        (1000, '')
        >>> record.image_spec["config"]["User"]
        '1000:1000'
    """

    id: str
    repo_tags: tuple[str, ...] = ()
    repo_digests: tuple[str, ...] = ()
    size: int = 0
    user: str = ""
    annotations: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    #: The OCI image config blob as stored (JSON bytes); verbose ImageStatus
    #: reports it parsed as ``imageSpec``. Kept as bytes: a parsed config
    #: costs several times its size in memory, and it is rarely asked for.
    config: bytes = b""
    chain_id: str = ""
    #: Where the backend read the image from (a path, a URL); shown in verbose info.
    source: str = ""
    manifest_digest: str = ""
    manifest_media_type: str = ""
    #: Backend-specific facts for verbose info; plain strings.
    extra: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    #: The backend's own store says the image is pinned (containerd's CRI pin
    #: label, an upstream CRI's ``pinned``); ``Image.pinned`` is set when this
    #: or the config's ``pinned`` list says so.
    pinned: bool = False
    #: Set by backends that forward to another CRI image service (``cri``):
    #: the endpoint that holds the image. That runtime, not crishim, has the
    #: config blob and vouches for the image; filters that judge OCI
    #: compliance from the config take its word (there is no blob to check).
    upstream: str = ""
    #: Set for OCI artifacts (an image manifest whose config is the empty
    #: descriptor, or which names an ``artifactType``): the artifact type
    #: (the manifest's ``artifactType``, else its config media type). An
    #: artifact is not a runnable image: its ``id`` is its manifest digest,
    #: it has no image config and no user. Empty for images.
    artifact_type: str = ""

    #: Opaque per-record cache for the catalog and service layers (answers,
    #: verdicts); keys are private objects or backend names. Not
    #: part of the record's identity. Dies with the record.
    cache: dict[Any, Any] = field(default_factory=dict, init=False, compare=False, repr=False)

    @property
    def image_spec(self) -> dict[str, Any]:
        """The parsed image config (empty when the backend has none)."""
        if not self.config:
            return {}
        parsed = json.loads(self.config)
        return parsed if isinstance(parsed, dict) else {}

    @property
    def uid(self) -> int | None:
        """The CRI ``uid``: the ``User`` when numeric (group dropped), else None."""
        return split_user(self.user)[0]

    @property
    def username(self) -> str:
        """The CRI ``username``: the ``User`` when not numeric (group dropped), else empty."""
        return split_user(self.user)[1]


def chain_id_of(record: ImageRecord) -> str:
    """The record's ``chain_id``, else the one its config's ``rootfs.diff_ids`` give.

    Backends may leave ``chain_id`` empty (at 100,000 images it is 71 bytes a
    record for what only verbose ImageStatus shows): it is derived here, on
    demand. Empty for an image without a config or layers.
    """
    if record.chain_id:
        return record.chain_id
    rootfs = record.image_spec.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list):
        return ""
    # imported here: the OCI vocabulary may build on this model, never the reverse at import
    from crishim.oci.spec import chain_id

    return chain_id([d for d in diff_ids if isinstance(d, str)])


@dataclass(frozen=True, slots=True)
class FilesystemUsage:
    """What a backend's store occupies on one filesystem (ImageFsInfo).

    Backends sharing a mountpoint are summed. Keep a running figure (or
    one measured off the call path) rather than walking the store per
    call; the contract kit checks that ``timestamp_ns`` is a
    ``time.time_ns()`` value of the last hour.

    Example::

        import time

        from crishim.oci.layout import mountpoint_of

        usage = FilesystemUsage(
            mountpoint=mountpoint_of(store),
            used_bytes=total_bytes,
            inodes_used=file_count,
            timestamp_ns=time.time_ns(),
        )
    """

    #: The mountpoint of the filesystem (kubelet's image filesystem).
    mountpoint: str
    #: Bytes the store occupies there (allocated blocks).
    used_bytes: int
    #: Inodes the store occupies there.
    inodes_used: int
    #: When this was measured: ``time.time_ns()`` (nanoseconds since the epoch).
    timestamp_ns: int
    #: True for a filesystem where the runtime keeps containers (ImageFsInfo's
    #: ``container_filesystems``, a split image filesystem), not images.
    container: bool = False


@dataclass(slots=True, eq=False)
class Answer:
    """An image as the catalog answers it: the record and who gave it.

    The catalog keeps one Answer per (record, backend), so whatever the
    service layer derives from it (``wire``: the serialized reply) is
    computed once per image, not once per call.
    """

    record: ImageRecord
    backend: str
    pinned: bool = False
    #: The runtime handler the image was answered for (``Image.spec.runtime_handler``).
    runtime_handler: str = ""
    #: Opaque, filled by the service layer: the ready non-verbose reply.
    wire: bytes | None = field(default=None, repr=False)
