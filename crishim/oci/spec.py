"""The OCI vocabulary crishim speaks: media types, annotation keys, digests.

Facts from the OCI image and distribution specifications (and Docker's
schema-2 equivalents), defined once and imported everywhere else. Pure: no
I/O, standard library only.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

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
#: Manifests without a config descriptor: not OCI images, carried for the filters.
CONFIGLESS_TYPES = frozenset({EMBEDDED_MANIFEST, DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED})

#: The OCI 1.1 empty descriptor: the config of an artifact that has none,
#: the two bytes ``{}``.
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
OCI_EMPTY_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"


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


#: The OCI image-layout annotation naming an ``index.json`` entry.
REF_NAME = "org.opencontainers.image.ref.name"
#: containerd's annotation holding an entry's full image name.
CONTAINERD_NAME = "io.containerd.image.name"

#: Manifests and configs larger than this are refused (the distribution
#: spec suggests registries accept manifests up to 4 MiB).
MAX_JSON_BLOB = 4 * 1024 * 1024

#: A digest crishim accepts: it can only name a file under ``blobs/``.
DIGEST_RE = re.compile(r"^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$")


def check_digest(digest: str) -> tuple[str, str]:
    """(algorithm, hex) of a ``sha256:``/``sha512:`` digest; ValueError otherwise."""
    if not DIGEST_RE.match(digest):
        raise ValueError(f"invalid digest {digest[:80]!r}")
    algorithm, _, hexpart = digest.partition(":")
    return algorithm, hexpart


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
