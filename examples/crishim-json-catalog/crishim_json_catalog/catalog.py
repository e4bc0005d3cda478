"""Reading the catalogue: which images exist, by which names, from which manifest.

The catalogue is one JSON file, rewritten whole (write aside, rename) by the
program that owns the store::

    {"images": [
        {"names": ["example.com/app:1.0", "example.com/app:stable"],
         "manifest": "sha256:<64 hex>"},
        {"names": [], "manifest": "sha256:<64 hex>"}
    ]}

``manifest`` is the digest of the image's manifest or image index in the
store (``mediaType`` may say what it is, for manifests that do not say it
themselves); ``names`` are image references (``busybox:1.36`` is
``docker.io/library/busybox:1.36``), possibly none (the image is then known
by its ID only). Each entry is checked on its own: a malformed one is
reported and skipped, the rest serve.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from crishim import reference

#: A larger catalogue is refused (a runaway writer must not eat the memory).
MAX_CATALOG = 64 * 1024 * 1024


class CatalogError(Exception):
    """The catalogue as a whole cannot be read; the message says why."""


class CatalogImage(BaseModel):
    """One entry of the catalogue."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    #: Image references naming the image; empty: known by its ID only.
    names: tuple[str, ...] = ()
    #: The digest of its manifest or image index in the store.
    manifest: str = Field(min_length=1)
    #: The manifest's media type, for manifests that do not say it themselves.
    media_type: str = Field(default="", alias="mediaType")

    @field_validator("manifest")
    @classmethod
    def _digest(cls, value: str) -> str:
        return reference.parse_digest(value)

    @field_validator("names")
    @classmethod
    def _names(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        for value in values:
            reference.normalize_name(value)
        return values


def _problem(index: int, exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"] if not isinstance(part, int))
    message = str(first["msg"]).removeprefix("Value error, ")
    return f"images[{index}]{'.' + where if where else ''}: {message}"


def read_catalog(path: Path) -> tuple[list[CatalogImage], list[str]]:
    """The catalogue's entries, and the problems of the ones skipped.

    Raises :class:`CatalogError` when the file as a whole cannot be used.
    """
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_CATALOG + 1)
    except OSError as exc:
        raise CatalogError(f"cannot read the catalogue {path}: {exc.strerror}") from None
    if len(data) > MAX_CATALOG:
        raise CatalogError(f"the catalogue {path} is over {MAX_CATALOG} bytes")
    try:
        document = json.loads(data)
    except ValueError as exc:
        raise CatalogError(f"the catalogue {path} is not valid JSON: {exc}") from None
    images = document.get("images") if isinstance(document, dict) else None
    if not isinstance(images, list):
        raise CatalogError(f'the catalogue {path} has no "images" list')
    entries: list[CatalogImage] = []
    problems: list[str] = []
    for i, raw in enumerate(images):
        try:
            entries.append(CatalogImage.model_validate(raw))
        except ValidationError as exc:
            problems.append(_problem(i, exc))
    return entries, problems
