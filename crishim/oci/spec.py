"""The OCI vocabulary crishim speaks: media types, annotation keys, digests,
descriptors, platforms.

Facts from the OCI image and distribution specifications (and Docker's
schema-2 equivalents), defined once and imported everywhere else. Pure: no
I/O, standard library only (the digest grammar is
:func:`crishim.reference.is_valid_digest`'s, the one digest check). What
is malformed raises :class:`InvalidContent`, a ``ValueError`` each caller
turns into its own error (a skipped entry, DATA_LOSS).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crishim.reference import is_valid_digest as is_valid_digest  # the one digest check

if TYPE_CHECKING:
    from crishim.model import Platform

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
CONFIG_TYPES = frozenset({OCI_CONFIG, DOCKER_CONFIG})
EMBEDDED_MANIFEST = "application/embedded.manifest+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
#: Docker schema-1 manifests (no config descriptor).
SCHEMA1_TYPES = frozenset({DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED})
#: Manifests without a config descriptor: not OCI images, carried for the filters.
CONFIGLESS_TYPES = frozenset({EMBEDDED_MANIFEST, *SCHEMA1_TYPES})

#: The OCI 1.1 empty descriptor: the config of an artifact that has none,
#: the two bytes ``{}``.
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
OCI_EMPTY_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"

#: The OCI image-layout annotation naming an ``index.json`` entry.
REF_NAME = "org.opencontainers.image.ref.name"
#: containerd's annotation holding an entry's full image name.
CONTAINERD_NAME = "io.containerd.image.name"

#: Manifests and configs larger than this are refused (the distribution
#: spec suggests registries accept manifests up to 4 MiB).
MAX_JSON_BLOB = 4 * 1024 * 1024


class InvalidContent(ValueError):
    """A digest, descriptor or JSON document is malformed; the message says how."""


# -- digests ---------------------------------------------------------------------


def check_digest(digest: object) -> tuple[str, str]:
    """(algorithm, hex) of a ``sha256:``/``sha512:`` digest; InvalidContent otherwise."""
    if not isinstance(digest, str) or not is_valid_digest(digest):
        raise InvalidContent(f"invalid digest {str(digest)[:80]!r}")
    algorithm, _, hexpart = digest.partition(":")
    return algorithm, hexpart


def blob_path(digest: object) -> str:
    """``blobs/<algorithm>/<hex>``, a blob's path in a layout; InvalidContent for a bad digest.

    The digest grammar (lowercase hex only) is what keeps the path a name
    under ``blobs/``.
    """
    algorithm, hexpart = check_digest(digest)
    return f"blobs/{algorithm}/{hexpart}"


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    """The ``algorithm:hex`` digest of ``data``."""
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def chain_id(diff_ids: Sequence[str]) -> str:
    """The OCI ChainID of a layer stack (empty for no layers)."""
    if not diff_ids:
        return ""
    chain = diff_ids[0]
    for diff_id in diff_ids[1:]:
        chain = "sha256:" + hashlib.sha256(f"{chain} {diff_id}".encode()).hexdigest()
    return chain


# -- descriptors -----------------------------------------------------------------


def descriptor_fields(raw: object, what: str) -> tuple[str, int, str]:
    """(digest, size, media type) of a descriptor object, each checked; InvalidContent otherwise.

    The digest must pass the digest check, the size be a non-negative
    integer; a media type that is not a string reads as "".
    """
    if not isinstance(raw, Mapping):
        raise InvalidContent(f"{what} is not a descriptor object")
    digest, size, media_type = raw.get("digest"), raw.get("size"), raw.get("mediaType", "")
    if not isinstance(digest, str) or not is_valid_digest(digest):
        raise InvalidContent(f"{what} has an invalid digest {str(digest)[:80]!r}")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidContent(f"{what} {digest} has an invalid size {size!r}")
    return digest, size, media_type if isinstance(media_type, str) else ""


@dataclass(frozen=True)
class Descriptor:
    """A checked OCI descriptor: what names a blob, with its size and media type."""

    digest: str
    size: int
    media_type: str

    @classmethod
    def parse(cls, raw: object, what: str) -> Descriptor:
        """The descriptor ``raw`` holds (see :func:`descriptor_fields`)."""
        return cls(*descriptor_fields(raw, what))


# -- documents -------------------------------------------------------------------


def parse_json(data: bytes, what: str) -> Any:
    """``data`` parsed as JSON; InvalidContent naming ``what`` otherwise."""
    try:
        return json.loads(data)
    except ValueError as exc:
        raise InvalidContent(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidContent(f"{what} is nested too deep") from None


def json_object(data: bytes, what: str) -> dict[str, Any]:
    """``data`` parsed as a JSON object (a manifest, an index, a config), else InvalidContent."""
    parsed = parse_json(data, what)
    if not isinstance(parsed, dict):
        raise InvalidContent(f"{what} is not a JSON object")
    return parsed


def artifact_type(manifest_media_type: str, manifest: Mapping[str, Any]) -> str:
    """The artifact type of an image manifest that holds an OCI artifact, else "".

    An artifact (OCI image spec 1.1; what kubelet mounts as an ``image``
    volume) is an OCI image manifest that is not a container image: its
    config is the empty descriptor (``application/vnd.oci.empty.v1+json``),
    or it names an ``artifactType``. Its type is ``artifactType``, else the
    config's media type. A manifest whose config is a container image config
    is an image whatever else it says; one with another config and no
    ``artifactType`` is neither (""), as is every Docker manifest.
    """
    if manifest_media_type != OCI_MANIFEST:
        return ""
    config = manifest.get("config")
    config_type = config.get("mediaType") if isinstance(config, Mapping) else None
    if not isinstance(config_type, str) or config_type in CONFIG_TYPES:
        return ""
    declared = manifest.get("artifactType")
    if isinstance(declared, str) and declared:
        return declared
    return config_type if config_type == OCI_EMPTY else ""


# -- platforms -------------------------------------------------------------------


def choose_platform(manifests: Sequence[object], platform: Platform) -> int | None:
    """The position in an image index's ``manifests`` of the entry for ``platform``, or None.

    An entry whose platform has the exact variant wins; else the first
    that :meth:`crishim.model.Platform.matches`. Entries that are not
    objects, or whose platform fields are not strings, are passed over.
    """
    fallback = None
    for i, candidate in enumerate(manifests):
        if not isinstance(candidate, Mapping):
            continue
        plat = candidate.get("platform")
        if not isinstance(plat, Mapping):
            continue
        os_name, arch = plat.get("os", ""), plat.get("architecture", "")
        variant = plat.get("variant", "") or ""
        if not (isinstance(os_name, str) and isinstance(arch, str) and isinstance(variant, str)):
            continue
        if not platform.matches(os_name, arch, variant):
            continue
        if variant == platform.variant:
            return i
        if fallback is None:
            fallback = i
    return fallback
