"""Writing ``docker save`` archives with the standard library, for tests.

Two shapes, as Docker writes them:

* ``legacy`` (Docker before 25): ``manifest.json``, ``repositories``,
  ``<config hex>.json`` and ``<layer id>/layer.tar``;
* ``oci`` (Docker 25 and later): the same ``manifest.json`` pointing into an
  OCI layout (``blobs/sha256/...``, ``index.json`` with the image names and
  manifest digests, ``oci-layout``).

Everything is deterministic (fixed mtimes, owners and modes).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


def _json(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _layer_tar(files: Mapping[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, text in sorted(files.items()):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@dataclass
class SavedImage:
    """One image to put in an archive, and (once written) what it became."""

    tags: Sequence[str] = ()
    user: str = ""
    layers: Sequence[Mapping[str, str]] = ({"etc/hello": "hello\n"},)
    #: Replaces the config entirely (a non-compliant image), when given.
    raw_config: Mapping[str, Any] | None = None
    # -- filled in by save() --
    id: str = ""
    size: int = 0
    #: Normalised ``name@manifest-digest`` (oci shape only).
    digests: list[str] = field(default_factory=list)

    def config(self, diff_ids: list[str]) -> dict[str, Any]:
        if self.raw_config is not None:
            return dict(self.raw_config)
        return {
            "architecture": "amd64",
            "os": "linux",
            "created": "2024-01-01T00:00:00Z",
            "config": {"User": self.user, "Env": ["PATH=/usr/bin:/bin"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))


def _normalise(tag: str) -> str:
    repository, _, tag_part = tag.rpartition(":")
    if "/" not in repository:
        repository = f"docker.io/library/{repository}"
    elif "." not in repository.split("/")[0] and ":" not in repository.split("/")[0]:
        repository = f"docker.io/{repository}"
    return f"{repository}:{tag_part}"


def save(
    path: Path,
    images: Sequence[SavedImage],
    *,
    shape: Literal["legacy", "oci"] = "legacy",
    compress: bool = False,
) -> Path:
    """Write ``images`` as one ``docker save`` archive at ``path``; fill in their IDs."""
    buf = io.BytesIO()
    manifest: list[dict[str, Any]] = []
    index: list[dict[str, Any]] = []
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        written: set[str] = set()

        def put(name: str, data: bytes) -> None:
            if name not in written:
                written.add(name)
                _add(tar, name, data)

        for image in images:
            layer_names, diff_ids, layer_descs, size = [], [], [], 0
            for files in image.layers:
                data = _layer_tar(files)
                digest = _sha(data)
                hexpart = digest.removeprefix("sha256:")
                name = f"blobs/sha256/{hexpart}" if shape == "oci" else f"{hexpart}/layer.tar"
                put(name, data)
                layer_names.append(name)
                diff_ids.append(digest)
                layer_descs.append({"mediaType": OCI_LAYER, "digest": digest, "size": len(data)})
                size += len(data)
            config = _json(image.config(diff_ids))
            image.id = _sha(config)
            hexid = image.id.removeprefix("sha256:")
            config_name = f"blobs/sha256/{hexid}" if shape == "oci" else f"{hexid}.json"
            put(config_name, config)
            image.size = size + len(config)
            manifest.append(
                {"Config": config_name, "RepoTags": list(image.tags) or None, "Layers": layer_names}
            )
            if shape == "oci":
                oci_manifest = _json(
                    {
                        "schemaVersion": 2,
                        "mediaType": OCI_MANIFEST,
                        "config": {
                            "mediaType": OCI_CONFIG,
                            "digest": image.id,
                            "size": len(config),
                        },
                        "layers": layer_descs,
                    }
                )
                manifest_digest = _sha(oci_manifest)
                put(f"blobs/sha256/{manifest_digest.removeprefix('sha256:')}", oci_manifest)
                for tag in image.tags:
                    full = _normalise(tag)
                    index.append(
                        {
                            "mediaType": OCI_MANIFEST,
                            "digest": manifest_digest,
                            "size": len(oci_manifest),
                            "annotations": {
                                "io.containerd.image.name": full,
                                "org.opencontainers.image.ref.name": full.rpartition(":")[2],
                            },
                        }
                    )
                    repo_digest = f"{full.rpartition(':')[0]}@{manifest_digest}"
                    if repo_digest not in image.digests:
                        image.digests.append(repo_digest)
        put("manifest.json", _json(manifest))
        if shape == "oci":
            put("index.json", _json({"schemaVersion": 2, "manifests": index}))
            put("oci-layout", _json({"imageLayoutVersion": "1.0.0"}))
        else:
            repositories: dict[str, dict[str, str]] = {}
            for image in images:
                for tag in image.tags:
                    repo, _, tag_part = tag.rpartition(":")
                    repositories.setdefault(repo, {})[tag_part] = image.id.removeprefix("sha256:")
            put("repositories", _json(repositories))
    data = buf.getvalue()
    if compress:
        data = gzip.compress(data, mtime=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path
