"""What is particular to the json-catalog backend: its catalogue, its store, its faults."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from catalog_store import PLATFORM, options, store, write_catalog
from crishim_json_catalog import JsonCatalogBackend, read_catalog

from crishim.config import parse_settings
from crishim.container import make_application
from crishim.errors import BackendError
from crishim.manager import load_plugins
from crishim.testing.server import RunningShim, running_server

EXAMPLE = Path(__file__).resolve().parents[1]
EMBEDDED = "example.com/crishim/embedded:1.0"


@contextmanager
def serve(root: Path, **extra: Any) -> Iterator[RunningShim]:
    backends = [{"name": "catalog", "type": "json-catalog", "options": options(root, **extra)}]
    with running_server({"backends": backends, "platform": PLATFORM}) as shim:
        yield shim


def wait_for(condition: Callable[[], bool], what: str) -> None:
    """Poll until ``condition`` holds; generous, as the machines here are slow."""
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        time.sleep(0.05)


def test_the_backend_type_comes_from_the_installed_entry_point() -> None:
    backend_type = load_plugins().backend_types()["json-catalog"]
    assert backend_type.package == "crishim-json-catalog"
    assert backend_type.factory is JsonCatalogBackend


def test_the_example_serves_the_demo_store_and_hides_its_embedded_image(tmp_path: Path) -> None:
    """example.yaml over the demo layout's blobs, its state in this test's directory."""
    result = subprocess.run(
        [sys.executable, "-m", "crishim.cli", "check-config", str(EXAMPLE / "example.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "catalog: type json-catalog (crishim-json-catalog 0.1.0)" in result.stdout
    config = yaml.safe_load((EXAMPLE / "example.yaml").read_text())
    config["state_dir"] = str(tmp_path / "state")
    with running_server(config, base_dir=EXAMPLE) as shim:
        hello = shim.status("example.com/crishim/hello:stable").image
        assert hello.uid.value == 1002
        assert sorted(hello.repo_tags) == [
            "example.com/crishim/hello:1.0",
            "example.com/crishim/hello:stable",
        ]
        assert not shim.status(EMBEDDED).HasField("image")
        assert len(shim.list()) == 3, "hello, web and multi; the embedded image is hidden"


def test_broken_entries_are_skipped_and_the_rest_serve(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    b = store(tmp_path / "store")
    good = b.image(user="1000", name="good")
    corrupt = b.image(name="corrupt")
    config = b.blob_path(corrupt.config.digest)
    changed = bytearray(config.read_bytes())
    changed[-2] ^= 1  # the same size, no longer its digest
    config.write_bytes(bytes(changed))
    outside = tmp_path / "outside.json"
    outside.write_bytes(b.blob_path(good.manifest.digest).read_bytes())
    linked = b.image(name="linked")
    link = b.blob_path(linked.manifest.digest)
    link.unlink()
    link.symlink_to(outside)  # a blob that leads out of the store
    missing = "sha256:" + "1" * 64
    write_catalog(
        tmp_path / "catalog.json",
        [
            {"names": ["example.com/good:1"], "manifest": good.manifest.digest},
            {"names": ["example.com/missing:1"], "manifest": missing},
            {"names": ["example.com/corrupt:1"], "manifest": corrupt.manifest.digest},
            {"names": ["example.com/linked:1"], "manifest": linked.manifest.digest},
            {"names": ["Not/A/Name"], "manifest": good.manifest.digest},
            {"names": ["example.com/escape:1"], "manifest": "sha256:../../../etc/passwd"},
            {"names": ["example.com/extra:1"], "manifest": good.manifest.digest, "colour": 1},
            "not an object",
        ],
    )
    with caplog.at_level(logging.WARNING, logger="crishim_json_catalog"), serve(tmp_path) as shim:
        assert [i.repo_tags for i in shim.list()] == [["example.com/good:1"]]
        for name in ("missing", "corrupt", "linked", "escape", "extra"):
            assert not shim.status(f"example.com/{name}:1").HasField("image"), name
    warnings = "\n".join(r.getMessage() for r in caplog.records)
    assert f"example.com/missing:1: manifest {missing} is not in the store" in warnings
    assert "does not match its digest" in warnings
    (linked_problem,) = [line for line in warnings.splitlines() if "example.com/linked:1" in line]
    assert "symlink" in linked_problem  # refused, whatever words crishim.oci.layout uses
    assert 'images[4].names: invalid reference "Not/A/Name": repository name must be' in warnings
    assert "images[5].manifest" in warnings and "invalid digest" in warnings
    assert "images[6].colour" in warnings
    assert "images[7]" in warnings


def test_a_rewritten_catalogue_is_served_without_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    b = store(tmp_path / "store")
    first, second = b.image(name="first"), b.image(name="second")
    catalog = tmp_path / "catalog.json"
    write_catalog(catalog, [{"names": ["example.com/first:1"], "manifest": first.manifest.digest}])
    with serve(tmp_path, rescan_interval=0.05) as shim:
        assert shim.status("example.com/first:1").HasField("image")
        write_catalog(
            catalog,
            [
                {"names": ["example.com/first:1"], "manifest": first.manifest.digest},
                {"names": ["example.com/second:1"], "manifest": second.manifest.digest},
            ],
        )
        wait_for(lambda: shim.status("example.com/second:1").HasField("image"), "the second image")
        # a catalogue that cannot be read keeps what was served
        with caplog.at_level(logging.ERROR, logger="crishim_json_catalog"):
            aside = catalog.with_name("half.json")
            aside.write_text('{"images": [')
            os.replace(aside, catalog)
            wait_for(
                lambda: any("not valid JSON" in r.getMessage() for r in caplog.records), "the error"
            )
        assert shim.status("example.com/second:1").HasField("image")
        # and an emptied one removes the images
        write_catalog(catalog, [])
        wait_for(lambda: not shim.list(), "the empty catalogue")


def test_reading_the_catalogue_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from crishim_json_catalog import catalog as module

    path = tmp_path / "catalog.json"
    path.write_text('{"images": []}' + " " * 64)
    monkeypatch.setattr(module, "MAX_CATALOG", 32)
    with pytest.raises(module.CatalogError, match="over 32 bytes"):
        read_catalog(path)


@pytest.mark.parametrize(
    ("make", "key", "message"),
    [
        (lambda root: (root / "store").mkdir(), "catalog", "does not exist"),
        (lambda root: (root / "catalog.json").write_text("[]"), "store", "does not exist"),
    ],
    ids=["no-catalogue", "no-store"],
)
def test_a_missing_path_is_a_config_error_naming_its_key(
    tmp_path: Path, make: Callable[[Path], object], key: str, message: str
) -> None:
    make(tmp_path)
    config = tmp_path / "crishim.yaml"
    config.write_text(
        "backends:\n  - name: catalog\n    type: json-catalog\n"
        "    options: {catalog: catalog.json, store: store}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "crishim.cli", "check-config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert f"backends[0].options.{key}" in result.stderr and message in result.stderr


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: (root / "store").mkdir(), "has no blobs/ directory"),
        (lambda root: (root / "store" / "blobs").mkdir(parents=True), 'has no "images" list'),
    ],
    ids=["no-blobs", "no-images-list"],
)
def test_a_backend_that_cannot_start_says_why(
    tmp_path: Path, make: Callable[[Path], object], message: str
) -> None:
    (tmp_path / "catalog.json").write_text('{"images": {}}')
    make(tmp_path)
    settings = parse_settings(
        {"backends": [{"name": "catalog", "type": "json-catalog", "options": options(tmp_path)}]},
        source="<test>",
    )
    catalog = make_application(settings).catalog()
    with pytest.raises(BackendError, match=message) as info:
        catalog.start()
    assert "backend 'catalog'" in str(info.value)
    catalog.close()


def test_removal_is_refused_and_names_the_owner(tmp_path: Path) -> None:
    b = store(tmp_path / "store")
    image = b.image(name="kept")
    write_catalog(
        tmp_path / "catalog.json",
        [{"names": ["example.com/kept:1"], "manifest": image.manifest.digest}],
    )
    with serve(tmp_path) as shim:
        with pytest.raises(grpc.RpcError) as info:
            shim.remove("example.com/kept:1")
        assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert "read-only" in (info.value.details() or "")
        assert shim.status("example.com/kept:1").HasField("image")
        (usage,) = shim.fsinfo().image_filesystems
        assert usage.used_bytes.value > 0 and usage.inodes_used.value > 1
