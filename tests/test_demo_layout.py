"""The demo the README serves: examples/local.yaml over examples/layouts/demo.

The layout holds one iSulad embedded image next to the OCI ones, so a
newcomer sees the embedded-filter work: ImageStatus answers nil for it,
lists leave it out, and at debug level the log says which filter hid it
and why. Nothing here writes outside the test's own directories.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from crishim.testing.embedded import EMBEDDED_MANIFEST
from crishim.testing.server import running_server

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
DEMO = EXAMPLES / "layouts" / "demo"
EMBEDDED = "example.com/crishim/embedded:1.0"


def _embedded_digest() -> str:
    for entry in json.loads((DEMO / "index.json").read_bytes())["manifests"]:
        if entry["mediaType"] == EMBEDDED_MANIFEST:
            return str(entry["digest"])
    raise AssertionError("the demo layout holds no embedded image")


def _local_config(state_dir: Path) -> dict[str, Any]:
    """examples/local.yaml, its state kept in the test's directory."""
    config: dict[str, Any] = yaml.safe_load((EXAMPLES / "local.yaml").read_text())
    config["state_dir"] = str(state_dir)
    return config


def test_the_demo_serves_its_images_and_hides_the_embedded_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    digest = _embedded_digest()
    caplog.set_level(logging.DEBUG, logger="crishim.catalog")
    with running_server(_local_config(tmp_path / "state"), base_dir=EXAMPLES) as shim:
        assert shim.status("example.com/crishim/hello:1.0").image.uid.value == 1002
        for ref in (EMBEDDED, digest):
            assert not shim.status(ref).HasField("image"), ref
        listed = {name for image in shim.list() for name in (image.id, *image.repo_tags)}
        assert "example.com/crishim/web:1.0" in listed
        assert EMBEDDED not in listed and digest not in listed
    reasons = [r.getMessage() for r in caplog.records if "hidden by filter" in r.getMessage()]
    assert any(
        f"image {digest} (asked as {EMBEDDED}) from backend demo is hidden by filter "
        "embedded-filter: embedded image" in m
        for m in reasons
    ), reasons


def test_crishim_images_says_at_debug_why_the_embedded_image_is_not_listed(
    tmp_path: Path,
) -> None:
    config = _local_config(tmp_path / "state")
    config["backends"][0]["options"]["path"] = str(DEMO)
    path = tmp_path / "local.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "crishim.cli", "images", "--config", str(path)]
    plain = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    assert "example.com/crishim/hello:1.0" in plain.stdout
    assert "embedded" not in plain.stdout + plain.stderr
    debug = subprocess.run(
        [*command, "--debug"], capture_output=True, text=True, timeout=60, check=True
    )
    assert debug.stdout == plain.stdout
    assert (
        f"image {_embedded_digest()} from backend demo is hidden by filter embedded-filter: "
        "embedded image (application/embedded.manifest+json" in debug.stderr
    )
