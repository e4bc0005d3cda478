"""The domain model from CRI messages, for backends that ask another CRI image service.

The ``cri`` backend (any CRI runtime) and the ``containerd`` backend
(containerd's own CRI, for ImageFsInfo) read CRI answers upstream; what they
make of them, and the auth they pass on, is defined here once.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from crishim.cri.runtime.v1 import api_pb2
from crishim.model import FilesystemUsage
from crishim.types import PullAuth

#: The fields a CRI ``AuthConfig`` and :class:`crishim.types.PullAuth` share, by name.
AUTH_FIELDS = ("username", "password", "auth", "server_address", "identity_token", "registry_token")


def auth_config(auth: PullAuth) -> api_pb2.AuthConfig:
    """A pull's auth as the CRI ``AuthConfig`` an upstream is sent, every field as it came."""
    return api_pb2.AuthConfig(**{name: getattr(auth, name) for name in AUTH_FIELDS})


def filesystem_usages(
    filesystems: Iterable[api_pb2.FilesystemUsage], *, container: bool = False
) -> list[FilesystemUsage]:
    """An upstream's ``image_filesystems`` (or, ``container``, ``container_filesystems``).

    A usage without a timestamp is stamped now (the CRI wants one above 0).
    """
    return [
        FilesystemUsage(
            mountpoint=fs.fs_id.mountpoint,
            used_bytes=fs.used_bytes.value,
            inodes_used=fs.inodes_used.value,
            timestamp_ns=fs.timestamp or time.time_ns(),
            container=container,
        )
        for fs in filesystems
    ]


def image_fs_info(response: api_pb2.ImageFsInfoResponse) -> list[FilesystemUsage]:
    """Every filesystem an ImageFsInfo answer names: its image ones, then its container ones."""
    return [
        *filesystem_usages(response.image_filesystems),
        *filesystem_usages(response.container_filesystems, container=True),
    ]
