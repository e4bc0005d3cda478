"""Stores and catalogues for the tests, written as the program owning them would.

The store's blobs are made by crishim's deterministic layout builder
(:class:`crishim.testing.ocibuild.LayoutBuilder`, blobs only: no
``index.json``); the catalogue is rewritten whole, aside then renamed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from crishim.testing.ocibuild import LayoutBuilder

#: What the tests' servers resolve image indexes to.
PLATFORM: dict[str, str] = {"os": "linux", "architecture": "arm64", "variant": "v8"}


def store(root: Path) -> LayoutBuilder:
    """A builder whose blobs land in ``root/blobs`` (the store)."""
    return LayoutBuilder(root)


def write_catalog(path: Path, images: Sequence[Mapping[str, object]]) -> None:
    """Replace the catalogue at ``path`` in one rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    aside = path.with_name(f".{path.name}.tmp")
    aside.write_text(json.dumps({"images": list(images)}, indent=2))
    os.replace(aside, path)


def options(root: Path, **extra: object) -> dict[str, object]:
    """The backend's options over ``root/catalog.json`` and ``root/store``."""
    return {"catalog": str(root / "catalog.json"), "store": str(root / "store"), **extra}
