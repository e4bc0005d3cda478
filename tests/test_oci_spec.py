"""crishim.oci.spec, the one OCI vocabulary: digests, descriptors, JSON, platform choice.

Also: every digest check in crishim is this one (no module keeps a digest
pattern of its own), and the layout builder for tests loads nothing but
the standard library besides what ``import crishim`` loads.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from crishim import reference
from crishim.model import Platform
from crishim.oci import spec
from crishim.oci.spec import InvalidContent

ROOT = Path(__file__).resolve().parent.parent
GOOD = "sha256:" + "ab" * 32
GOOD512 = "sha512:" + "cd" * 64


@pytest.mark.parametrize(
    "text",
    [
        GOOD + "\n",  # a "$"-anchored pattern lets this through
        "sha256:" + "AB" * 32,
        "sha256:" + "ab" * 31,
        "sha384:" + "ab" * 48,
        "sha256:" + "ab" * 32 + "/../x",
        "",
    ],
)
def test_the_digest_check_refuses(text: str) -> None:
    assert not spec.is_valid_digest(text)
    with pytest.raises(InvalidContent, match="invalid digest"):
        spec.check_digest(text)
    with pytest.raises(ValueError):
        spec.blob_path(text)


def test_the_digest_check_is_the_reference_grammars() -> None:
    assert spec.is_valid_digest is reference.is_valid_digest
    assert spec.check_digest(GOOD) == ("sha256", "ab" * 32)
    assert spec.blob_path(GOOD512) == f"blobs/sha512/{'cd' * 64}"
    assert spec.digest_of(b"{}") == spec.OCI_EMPTY_DIGEST


def test_no_module_keeps_a_digest_pattern_of_its_own() -> None:
    pattern = re.compile(r"sha(256|512):\[")
    owners = {ROOT / "crishim" / "reference.py"}
    found = [
        path.relative_to(ROOT)
        for folder in ("crishim", "plugins")
        for path in (ROOT / folder).rglob("*.py")
        if path not in owners and pattern.search(path.read_text())
    ]
    assert not found


def test_chain_id() -> None:
    one, two = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    assert spec.chain_id([]) == ""
    assert spec.chain_id([one]) == one
    assert spec.chain_id([one, two]) == spec.digest_of(f"{one} {two}".encode())


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([], "is not a descriptor object"),
        ({"size": 1}, "has an invalid digest"),
        ({"digest": "sha256:x", "size": 1}, "has an invalid digest"),
        ({"digest": GOOD}, "has an invalid size None"),
        ({"digest": GOOD, "size": -1}, "has an invalid size -1"),
        ({"digest": GOOD, "size": True}, "has an invalid size True"),
    ],
)
def test_a_malformed_descriptor_says_what_is_wrong(raw: object, message: str) -> None:
    with pytest.raises(InvalidContent, match=message) as info:
        spec.descriptor_fields(raw, "layer 2")
    assert str(info.value).startswith("layer 2")


def test_a_descriptor() -> None:
    raw = {"mediaType": spec.OCI_LAYER, "digest": GOOD, "size": 3}
    assert spec.descriptor_fields(raw, "x") == (GOOD, 3, spec.OCI_LAYER)
    assert spec.Descriptor.parse({**raw, "mediaType": 7}, "x") == spec.Descriptor(GOOD, 3, "")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{", "config is not valid JSON"),
        (b"[1]", "config is not a JSON object"),
        (b"[" * 100_000 + b"]" * 100_000, "config is nested too deep"),
    ],
)
def test_json_objects(data: bytes, message: str) -> None:
    with pytest.raises(InvalidContent, match=message):
        spec.json_object(data, "config")


def test_parse_json_takes_any_document() -> None:
    assert spec.parse_json(b"[1]", "x") == [1]
    assert spec.json_object(b'{"a": 1}', "x") == {"a": 1}


def _entry(os: object, arch: object, variant: object = None) -> dict[str, object]:
    plat: dict[str, object] = {"os": os, "architecture": arch}
    if variant is not None:
        plat["variant"] = variant
    return {"digest": GOOD, "platform": plat}


def test_the_platform_choice_prefers_the_exact_variant() -> None:
    manifests = [
        "junk",
        {"digest": GOOD},
        _entry("linux", "amd64"),
        _entry("linux", "arm64"),
        _entry("linux", "arm64", "v8"),
    ]
    assert spec.choose_platform(manifests, Platform("linux", "arm64", "v8")) == 4
    assert spec.choose_platform(manifests[:4], Platform("linux", "arm64", "v8")) == 3
    assert spec.choose_platform(manifests, Platform("linux", "amd64")) == 2
    assert spec.choose_platform(manifests, Platform("linux", "s390x")) is None


def test_the_platform_choice_passes_over_fields_that_are_not_strings() -> None:
    manifests = [_entry("linux", "amd64", 1), _entry("linux", ["amd64"]), {"platform": "x"}]
    assert spec.choose_platform(manifests, Platform("linux", "amd64")) is None


def test_the_layout_builder_loads_only_the_standard_library() -> None:
    """``crishim.testing.ocibuild`` adds nothing but stdlib to what ``import crishim`` loads."""
    script = """
import json, sys
import crishim
before = set(sys.modules)
import crishim.testing.ocibuild, crishim.testing.embedded
added = sorted(set(sys.modules) - before)
print(json.dumps(added))
"""
    out = subprocess.run(
        [sys.executable, "-c", script], check=True, capture_output=True, text=True
    ).stdout
    added = json.loads(out)
    foreign = [
        m
        for m in added
        if m.split(".")[0] not in sys.stdlib_module_names and not m.startswith("crishim.")
    ]
    assert not foreign
    ours = {m for m in added if m.startswith("crishim.")}
    assert ours <= {
        "crishim.model",
        "crishim.oci",
        "crishim.oci.atomic",
        "crishim.oci.spec",
        "crishim.reference",
        "crishim.testing",
        "crishim.testing._documents",
        "crishim.testing._layers",
        "crishim.testing.embedded",
        "crishim.testing.ocibuild",
    }, ours
