"""Reading one ``docker save`` archive into crishim image records.

A ``docker save`` archive is a tar file (possibly gzip-compressed) holding
``manifest.json``: a list of ``{"Config": ..., "RepoTags": [...], "Layers":
[...]}``, one per image. ``Config`` names the image config file inside the
archive (``<hex>.json`` in the legacy format, ``blobs/sha256/<hex>`` since
Docker 25); ``Layers`` name the layer tar files. Docker 25 and later also
write an OCI ``index.json`` whose entries carry the image name and the
manifest digest: those become the image's ``repo_digests``.

The image ID is the sha256 of the config file, as Docker reports it. The
archive's contents are only read, never extracted.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from crishim import reference
from crishim.model import ImageRecord
from crishim.oci.spec import CONTAINERD_NAME, chain_id

#: Config, manifest and index files larger than this are refused.
MAX_JSON = 4 * 1024 * 1024


class ArchiveError(Exception):
    """The archive (or one image in it) cannot be served; the message says why."""


class _Archive:
    """The members of one open tar file, by normalised name."""

    def __init__(self, tar: tarfile.TarFile) -> None:
        self.tar = tar
        self.members = {m.name.removeprefix("./"): m for m in tar.getmembers() if m.isfile()}

    def read(self, name: str, what: str) -> bytes:
        member = self.members.get(name.removeprefix("./"))
        if member is None:
            raise ArchiveError(f"{what} {name!r} is not in the archive")
        if member.size > MAX_JSON:
            raise ArchiveError(f"{what} {name!r} is {member.size} bytes, over {MAX_JSON}")
        stream: IO[bytes] | None = self.tar.extractfile(member)
        if stream is None:
            raise ArchiveError(f"{what} {name!r} cannot be read")
        with stream:
            return stream.read()

    def json(self, name: str, what: str) -> Any:
        try:
            return json.loads(self.read(name, what))
        except ValueError as exc:
            raise ArchiveError(f"{what} {name!r} is not valid JSON: {exc}") from None

    def blob(self, digest: str) -> str:
        algorithm, _, hexpart = digest.partition(":")
        return f"blobs/{algorithm}/{hexpart}"


def _digests_by_config(archive: _Archive) -> dict[str, list[str]]:
    """Config digest → ``name@manifest-digest`` from an OCI index.json, if any."""
    if "index.json" not in archive.members:
        return {}
    out: dict[str, list[str]] = {}
    index = archive.json("index.json", "index")
    for entry in index.get("manifests", []) if isinstance(index, dict) else []:
        annotations = entry.get("annotations") or {}
        name, digest = annotations.get(CONTAINERD_NAME), entry.get("digest")
        if not isinstance(name, str) or not isinstance(digest, str):
            continue
        try:
            manifest = archive.json(archive.blob(digest), "manifest")
            ref = reference.parse(name)
        except (ArchiveError, reference.ReferenceError):
            continue
        config = manifest.get("config") if isinstance(manifest, dict) else None
        if isinstance(config, dict) and isinstance(config.get("digest"), str):
            out.setdefault(config["digest"], []).append(f"{ref.repository}@{digest}")
    return out


def _record(
    archive: _Archive, entry: Mapping[str, Any], digests: Mapping[str, list[str]], source: str
) -> ImageRecord:
    config_name = entry.get("Config")
    if not isinstance(config_name, str):
        raise ArchiveError("a manifest.json entry has no Config")
    config_bytes = archive.read(config_name, "config")
    image_id = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
    named = Path(config_name).name.removesuffix(".json")
    if len(named) == 64 and named != image_id.removeprefix("sha256:"):
        raise ArchiveError(f"config {config_name!r} does not match its name (it is {image_id})")
    try:
        config = json.loads(config_bytes)
    except ValueError as exc:
        raise ArchiveError(f"config {config_name!r} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise ArchiveError(f"config {config_name!r} is not a JSON object")
    size = len(config_bytes)
    layers = entry.get("Layers")
    if not isinstance(layers, list):
        raise ArchiveError(f"image {image_id} has no Layers list")
    for layer in layers:
        member = archive.members.get(str(layer).removeprefix("./"))
        if member is None:
            raise ArchiveError(f"image {image_id}: layer {layer!r} is not in the archive")
        size += member.size
    tags: list[str] = []
    for text in entry.get("RepoTags") or ():
        try:
            ref = reference.parse(str(text))
        except reference.ReferenceError as exc:
            raise ArchiveError(f"image {image_id}: RepoTags {text!r}: {exc}") from None
        if ref.kind is not reference.RefKind.NAME or not ref.tag:
            raise ArchiveError(f"image {image_id}: RepoTags {text!r} is not name:tag")
        tags.append(ref.tagged())
    inner = config.get("config")
    user = inner.get("User", "") if isinstance(inner, dict) else ""
    rootfs = config.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    return ImageRecord(
        id=image_id,
        repo_tags=tuple(dict.fromkeys(tags)),
        repo_digests=tuple(dict.fromkeys(digests.get(image_id, ()))),
        size=size,
        user=user if isinstance(user, str) else "",
        config=config_bytes,
        chain_id=chain_id([d for d in diff_ids if isinstance(d, str)])
        if isinstance(diff_ids, list)
        else "",
        source=source,
        extra={"archive": source},
    )


def read_archive(path: Path) -> tuple[list[ImageRecord], list[str]]:
    """The images of one archive, and the problems of the ones skipped.

    Raises ArchiveError when the archive as a whole cannot be read.
    """
    try:
        with tarfile.open(path, "r:*") as tar:
            archive = _Archive(tar)
            manifest = archive.json("manifest.json", "manifest")
            if not isinstance(manifest, list):
                raise ArchiveError("manifest.json is not a list")
            digests = _digests_by_config(archive)
            records: list[ImageRecord] = []
            problems: list[str] = []
            for entry in manifest:
                if not isinstance(entry, dict):
                    problems.append("a manifest.json entry is not an object")
                    continue
                try:
                    records.append(_record(archive, entry, digests, str(path)))
                except ArchiveError as exc:
                    problems.append(str(exc))
            return records, problems
    except (OSError, tarfile.TarError, EOFError, zlib.error) as exc:
        raise ArchiveError(f"cannot read {path}: {exc}") from None
