"""The CRI messages and the domain model, both ways; the service's name.

The servicer (:mod:`crishim.service`) answers with the messages built here
from catalog answers: an ``Image``, the ready bytes of a non-verbose
ImageStatus (kept per record), the verbose ``info``, filesystem usage; and
takes a pull's pod from its request. The ``cri`` backend (any CRI runtime)
and the ``containerd`` backend (containerd's own CRI, for ImageFsInfo) read
CRI answers upstream; what they make of them, and the auth they pass on,
is defined here once too.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

from crishim.cri.runtime.v1 import api_pb2
from crishim.model import Answer, FilesystemUsage, chain_id_of
from crishim.types import PodContext, PullAuth

#: ``runtime.v1.ImageService``: the service crishim serves, named once, as
#: the generated descriptor has it (the gRPC method paths, the health
#: service's name, span and metric names all start from it).
IMAGE_SERVICE: str = api_pb2.DESCRIPTOR.services_by_name["ImageService"].full_name

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


# -- answering: the domain model as CRI messages --


def image_message(answer: Answer) -> api_pb2.Image:
    """The CRI ``Image`` for a catalog answer."""
    record = answer.record
    uid, username = record.uid, record.username
    image = api_pb2.Image(
        id=record.id,
        repo_tags=record.repo_tags,
        repo_digests=record.repo_digests,
        size=record.size,
        username=username,
        spec=api_pb2.ImageSpec(
            image=record.id,
            annotations=dict(record.annotations),
            runtime_handler=answer.runtime_handler,
        ),
        pinned=answer.pinned,
    )
    if uid is not None:
        image.uid.value = uid
    return image


def image_status_bytes(answer: Answer) -> bytes:
    """The serialized non-verbose ImageStatusResponse, kept per record.

    Records are immutable, so the answer is built once per (record,
    backend, pinned) and reused. The encoding of ``ImageStatusResponse``
    with only ``image`` (field 1) set is byte-for-byte one entry of the
    ``repeated Image images = 1`` field of ListImagesResponse and
    StreamImagesResponse, so lists are built by joining these.
    """
    data = answer.wire
    if data is None:
        data = api_pb2.ImageStatusResponse(image=image_message(answer)).SerializeToString()
        answer.wire = data
    return data


#: The serialized ImageStatusResponse of an absent image (``image`` unset).
EMPTY_STATUS = api_pb2.ImageStatusResponse().SerializeToString()


def verbose_info(answer: Answer) -> dict[str, str]:
    """``ImageStatusResponse.info`` for verbose calls: one JSON object under "info"."""
    record = answer.record
    info: dict[str, Any] = {
        "imageSpec": record.image_spec,
        "chainID": chain_id_of(record),
        "backend": answer.backend,
        "runtimeHandler": answer.runtime_handler,
        "source": record.source,
        "manifestDigest": record.manifest_digest,
        "manifestMediaType": record.manifest_media_type,
        "artifactType": record.artifact_type,
        "extra": dict(record.extra),
    }
    return {"info": json.dumps(info, sort_keys=True, separators=(",", ":"))}


def pod_of(request: api_pb2.PullImageRequest) -> PodContext | None:
    """The pod a PullImage is for (its sandbox config), when the caller sent one."""
    if not request.HasField("sandbox_config"):
        return None
    config = request.sandbox_config
    meta = config.metadata
    return PodContext(
        namespace=meta.namespace,
        name=meta.name,
        uid=meta.uid,
        annotations=dict(config.annotations),
        labels=dict(config.labels),
    )


def usage_message(usage: FilesystemUsage, now: int) -> api_pb2.FilesystemUsage:
    return api_pb2.FilesystemUsage(
        timestamp=usage.timestamp_ns or now,
        fs_id=api_pb2.FilesystemIdentifier(mountpoint=usage.mountpoint),
        used_bytes=api_pb2.UInt64Value(value=usage.used_bytes),
        inodes_used=api_pb2.UInt64Value(value=usage.inodes_used),
    )
