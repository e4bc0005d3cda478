"""The names an entry gives its image: its annotations, as containerd and OCI tools write them.

An *entry* (an ``index.json`` descriptor, or a containerd image record in
the same shape) names its image by ``io.containerd.image.name`` (a full
reference) and ``org.opencontainers.image.ref.name`` (a tag, by the OCI
layout spec; what follows the repository, as containerd's exporter writes
it). :func:`entry_key` is what tells entries apart when a store is read
again; :func:`entry_names` the normalised references.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from typing import Any

from crishim import reference
from crishim.oci.spec import CONTAINERD_NAME, REF_NAME, InvalidContent, is_valid_digest

_BARE_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")

#: (entry digest, io.containerd.image.name, org.opencontainers.image.ref.name)
EntryKey = tuple[str, str, str]


def entry_key(entry: Mapping[str, Any]) -> EntryKey:
    """The entry's digest and name annotations: an entry with the same key resolves the same."""
    annotations = entry.get("annotations")
    if not isinstance(annotations, dict):
        annotations = {}
    return (
        sys.intern(str(entry.get("digest", ""))),
        str(annotations.get(CONTAINERD_NAME, "")),
        str(annotations.get(REF_NAME, "")),
    )


def complete_ref_name(value: str, repository: str) -> str | None:
    """An ``org.opencontainers.image.ref.name`` value as a reference to parse.

    The OCI layout spec makes it a tag; containerd's exporter writes what
    follows the repository in the image's name: ``tag``, ``tag@<digest>``
    or, for an image named by digest only, ``@<digest>``; a bare
    ``<digest>`` is read the same way. These are completed with
    ``repository``. Without one, a tag alone is read as a name (``busybox``)
    and a digest alone names nothing (None). Anything else is a full
    reference already.
    """
    tag, at, digest = value.partition("@")
    if not at and is_valid_digest(value):
        tag, at, digest = "", "@", value
    if at and (not tag or _BARE_TAG_RE.match(tag)):
        if repository:
            return f"{repository}:{tag}@{digest}" if tag else f"{repository}@{digest}"
        return value if tag else None
    if _BARE_TAG_RE.match(value) and repository:
        return f"{repository}:{value}"
    return value


def entry_names(entry: Mapping[str, Any], repository: str = "") -> list[reference.Reference]:
    """The normalised names an entry gives its image; InvalidContent for a bad annotation.

    A bare tag or digest in ``ref.name`` is of ``repository``, else of the
    containerd name's repository (as containerd's exports write it).
    """
    annotations = entry.get("annotations")
    if annotations is None:
        return []
    if not isinstance(annotations, dict):
        raise InvalidContent("annotations is not a JSON object")
    out: list[reference.Reference] = []
    for key in (CONTAINERD_NAME, REF_NAME):
        value = annotations.get(key)
        if not isinstance(value, str) or not value:
            continue
        text = value
        if key == REF_NAME:
            completed = complete_ref_name(value, repository or (out[0].repository if out else ""))
            if completed is None:
                continue
            text = completed
        try:
            ref = reference.parse(text)
        except reference.ReferenceError as exc:
            raise InvalidContent(f"annotation {key}={value!r}: {exc}") from None
        if ref.kind is not reference.RefKind.NAME:
            if ref.also_name is None:
                raise InvalidContent(f"annotation {key}={value!r} is an image ID, not a name")
            ref = ref.also_name
        if ref not in out:
            out.append(ref)
    return out
