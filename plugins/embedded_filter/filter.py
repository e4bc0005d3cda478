"""The ``embedded-filter``: only OCI-compliant images reach the CRI.

An iSulad *embedded image* is described by a manifest with
``schemaVersion`` 1 and media type ``application/embedded.manifest+json``
(``image_name``, ``created``, ``layers`` that are host paths, squashfs
images or bind directories, and a ``config`` of env, entrypoint and
workdir). It has no image ID, no ``rootfs.diff_ids`` and no ``User``: it
does not comply with the OCI image specification, and ImageStatus cannot
answer it. This filter hides such images, and any other image lacking what
the OCI image specification requires, by these rules, in this order (the
first that applies gives the reason):

1. the manifest media type is ``application/embedded.manifest+json``;
2. the manifest media type is a Docker schema 1 type
   (``application/vnd.docker.distribution.manifest.v1+json`` or
   ``...v1+prettyjws``): no config descriptor;
3. the manifest media type is set and is neither
   ``application/vnd.oci.image.manifest.v1+json`` nor
   ``application/vnd.docker.distribution.manifest.v2+json``;
4. the image ID (the config descriptor's digest) is not ``sha256:<64 hex>``
   or ``sha512:<128 hex>``;
5. the backend carries no config blob (only with ``require_config``;
   never for an image a backend forwards from another CRI runtime, whose
   record names its ``upstream``: that runtime holds the config and vouches
   for the image, and rules 5-11 have nothing to check);
6. the config blob does not hash to the image ID;
7. the config is not a JSON object;
8. ``rootfs`` is not an object, or ``rootfs.type`` is not ``layers``;
9. ``rootfs.diff_ids`` is not a list of digests (it may be empty);
10. ``os`` is missing or not a non-empty string;
11. ``architecture`` is missing or not a non-empty string.

OCI artifacts (records with an ``artifact_type``: kubelet's ``image``
volumes) are not images, and the rules above are not theirs: an artifact
is visible when its manifest media type is the OCI image manifest's and its
ID is its manifest digest (``sha256:<64 hex>`` or ``sha512:<128 hex>``);
otherwise it is hidden. A backend refuses artifacts altogether with its
``artifacts: false`` option.

Options: ``list_hidden`` (ListImages and StreamImages still list hidden
images, as iSulad lists embedded images; ImageStatus and RemoveImage still
treat them as absent) and ``require_config`` (rule 5).
"""

from __future__ import annotations

import hashlib
import json

from crishim.model import ImageRecord
from crishim.oci.spec import (
    DOCKER_MANIFEST,
    EMBEDDED_MANIFEST,
    OCI_MANIFEST,
    is_valid_digest,
)
from crishim.oci.spec import SCHEMA1_TYPES as DOCKER_SCHEMA1
from crishim.types import VISIBLE, FilterContext, FilterOptions, Verdict

COMPLIANT_MANIFESTS = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})


class EmbeddedFilterOptions(FilterOptions):
    #: List hidden images in ListImages/StreamImages (iSulad lists embedded
    #: images); ImageStatus and RemoveImage still treat them as absent.
    list_hidden: bool = False
    #: Hide images whose backend carries no config blob (the filter cannot
    #: check ``rootfs``, ``os`` and ``architecture`` without it).
    require_config: bool = True


class EmbeddedFilter:
    """Hides embedded and otherwise non-OCI-compliant images."""

    def __init__(self, context: FilterContext, options: EmbeddedFilterOptions) -> None:
        self.name = context.name
        self.options = options

    def check(self, record: ImageRecord) -> Verdict:
        reason = self.problem(record)
        if reason is None:
            return VISIBLE
        return Verdict(hidden=True, reason=reason, listed=self.options.list_hidden)

    def problem(self, record: ImageRecord) -> str | None:
        """Why ``record`` is not an OCI-compliant image (or artifact), or None."""
        if record.artifact_type:
            return self.artifact_problem(record)
        media_type = record.manifest_media_type
        if media_type == EMBEDDED_MANIFEST:
            return (
                f"embedded image ({EMBEDDED_MANIFEST}, schemaVersion 1): no image ID, "
                "no rootfs.diff_ids, no User; it does not comply with the OCI image spec"
            )
        if media_type in DOCKER_SCHEMA1:
            return f"Docker schema 1 manifest ({media_type}) has no config descriptor"
        if media_type and media_type not in COMPLIANT_MANIFESTS:
            return f"manifest media type {media_type!r} is not an OCI image manifest"
        if not is_valid_digest(record.id):
            return (
                f"image ID {record.id!r} is not a config digest "
                "(sha256:<64 hex> or sha512:<128 hex>)"
            )
        config = record.config
        if not config:
            if record.upstream or not self.options.require_config:
                return None
            return "the backend gives no image config"
        algorithm, _, expected = record.id.partition(":")
        if hashlib.new(algorithm, config).hexdigest() != expected:
            return "the image config does not match the image ID (its digest)"
        try:
            parsed = json.loads(config)
        except ValueError:
            return "the image config is not valid JSON"
        if not isinstance(parsed, dict):
            return "the image config is not a JSON object"
        rootfs = parsed.get("rootfs")
        if not isinstance(rootfs, dict):
            return "the image config has no rootfs"
        if rootfs.get("type") != "layers":
            return f"rootfs.type is {rootfs.get('type')!r}, not 'layers'"
        diff_ids = rootfs.get("diff_ids")
        if not isinstance(diff_ids, list):
            return "the image config has no rootfs.diff_ids list"
        for diff_id in diff_ids:
            if not isinstance(diff_id, str) or not is_valid_digest(diff_id):
                return f"rootfs.diff_ids holds {diff_id!r}, not a digest"
        for key in ("os", "architecture"):
            value = parsed.get(key)
            if not isinstance(value, str) or not value:
                return f"the image config has no {key}"
        return None

    @staticmethod
    def artifact_problem(record: ImageRecord) -> str | None:
        """Why an OCI artifact's record is not a well-formed artifact, or None."""
        if record.manifest_media_type != OCI_MANIFEST:
            return (
                f"artifact ({record.artifact_type[:100]}) with manifest media type "
                f"{record.manifest_media_type!r}: artifacts are OCI image manifests"
            )
        if not is_valid_digest(record.id) or record.id != record.manifest_digest:
            return f"artifact ID {record.id[:80]!r} is not its manifest digest"
        return None
