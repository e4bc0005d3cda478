"""Hostile layouts cost their own answers: never a start-up, another backend, a hang,
or a file outside the layout (docs/security.md).

Every case serves two oci-dir backends: a victim layout broken by a helper
of crishim.testing.hostile, and a healthy one whose image must always be
served. The test timeout (pytest-timeout) turns a hang into a failure.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from crishim.testing.hostile import (
    dir_instead,
    fifo_instead,
    nesting_bomb,
    symlink_out,
    write_blob,
)
from crishim.testing.ocibuild import OCI_CONFIG, OCI_MANIFEST, BuiltImage, LayoutBuilder
from crishim.testing.server import RunningShim, running_server

GOOD = "healthy.example/app:1"
TIMEOUT = 60


@dataclass
class Victim:
    root: Path
    first: BuiltImage
    second: BuiltImage
    builder: LayoutBuilder


def _victim(root: Path) -> Victim:
    b = LayoutBuilder(root)
    first = b.image(name="first", layers=[{"first": "1\n"}])
    second = b.image(name="second", layers=[{"second": "2\n"}])
    b.tag(first, "victim.example/first:1")
    b.tag(second, "victim.example/second:1")
    b.write()
    return Victim(root, first, second, b)


def _config(victim: Path, healthy: Path, **options: object) -> dict[str, object]:
    return {
        "backends": [
            {"name": "victim", "type": "oci-dir", "options": {"path": str(victim), **options}},
            {"name": "healthy", "type": "oci-dir", "options": {"path": str(healthy)}},
        ]
    }


@pytest.fixture
def healthy(tmp_path: Path) -> tuple[Path, BuiltImage]:
    b = LayoutBuilder(tmp_path / "healthy")
    image = b.image(name="healthy")
    b.tag(image, GOOD)
    return b.write(), image


def _served(shim: RunningShim, ref: str) -> bool:
    return shim.status(ref).HasField("image")


def _outside_files(outside: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in outside.rglob("*") if p.is_file()}


# -- what every broken victim must do ------------------------------------------------------


def _blobs_out(v: Victim, out: Path) -> None:
    symlink_out(v.root / "blobs", out / "blobs")


def _sha256_out(v: Victim, out: Path) -> None:
    symlink_out(v.root / "blobs" / "sha256", out / "sha256")


def _index_out(v: Victim, out: Path) -> None:
    symlink_out(v.root / "index.json", out / "index.json")


def _index_bomb(v: Victim, out: Path) -> None:
    (v.root / "index.json").write_bytes(nesting_bomb())


BREAKERS: dict[str, Callable[[Victim, Path], None]] = {
    # the whole blob store, or one algorithm's directory, leads out of the layout
    "blobs-symlinked-out": _blobs_out,
    "blobs-sha256-symlinked-out": _sha256_out,
    "index-json-symlinked-out": _index_out,
    "index-json-fifo": lambda v, out: fifo_instead(v.root / "index.json"),
    "index-json-directory": lambda v, out: dir_instead(v.root / "index.json"),
    "oci-layout-fifo": lambda v, out: fifo_instead(v.root / "oci-layout"),
    "index-json-nesting-bomb": _index_bomb,
}


@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize("breaker", sorted(BREAKERS))
def test_a_broken_layout_costs_its_own_images_only(
    breaker: str, tmp_path: Path, healthy: tuple[Path, BuiltImage]
) -> None:
    victim = _victim(tmp_path / "victim")
    outside = tmp_path / "outside"
    outside.mkdir()
    BREAKERS[breaker](victim, outside)
    before = _outside_files(outside)
    healthy_root, image = healthy
    config = _config(victim.root, healthy_root, snapshot=False)
    with running_server(config) as shim:
        assert shim.status(GOOD).image.id == image.id
        for ref in ("victim.example/first:1", victim.first.id, victim.second.id):
            assert not _served(shim, ref), f"{ref} served from a broken layout ({breaker})"
        assert {i.id for i in shim.list()} == {image.id}
        # removing what the victim would name deletes nothing anywhere
        shim.remove("victim.example/first:1")
        shim.remove(victim.first.id)
    assert _outside_files(outside) == before, "a file outside the layout changed"


@pytest.mark.timeout(TIMEOUT)
def test_removal_through_a_symlinked_blobs_dir_deletes_nothing_outside(
    tmp_path: Path, healthy: tuple[Path, BuiltImage]
) -> None:
    # the layout is served while healthy, then its blobs/ is swapped for a link out
    victim = _victim(tmp_path / "victim")
    healthy_root, _ = healthy
    with running_server(_config(victim.root, healthy_root, snapshot=False)) as shim:
        assert _served(shim, "victim.example/first:1")
        outside = tmp_path / "outside"
        symlink_out(victim.root / "blobs", outside / "blobs")
        before = _outside_files(outside)
        shim.remove("victim.example/first:1")
        assert _outside_files(outside) == before, "RemoveImage deleted files outside the layout"
        assert _served(shim, GOOD)


def _manifest_entry(b: LayoutBuilder, config_digest: str, size: int, layers: object) -> None:
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": size},
            "layers": layers,
        }
    ).encode()
    digest = write_blob(b.root, manifest)
    b.add_raw_entry(
        {
            "mediaType": OCI_MANIFEST,
            "digest": digest,
            "size": len(manifest),
            "annotations": {"org.opencontainers.image.ref.name": "victim.example/broken:1"},
        }
    )


ENTRY_BREAKERS: dict[str, Callable[[LayoutBuilder, BuiltImage], None]] = {
    # a config that hashes right and is nested 100,000 deep
    "config-nesting-bomb": lambda b, img: _manifest_entry(
        b, write_blob(b.root, nesting_bomb()), len(nesting_bomb()), img.manifest_json["layers"]
    ),
    # a manifest that hashes right and is nested 100,000 deep
    "manifest-nesting-bomb": lambda b, img: b.add_raw_entry(
        {
            "mediaType": OCI_MANIFEST,
            "digest": write_blob(b.root, nesting_bomb()),
            "size": len(nesting_bomb()),
            "annotations": {"org.opencontainers.image.ref.name": "victim.example/broken:1"},
        }
    ),
    "config-claims-a-huge-size": lambda b, img: _manifest_entry(
        b, img.config.digest, 2**62, img.manifest_json["layers"]
    ),
    "layer-claims-a-huge-size": lambda b, img: _manifest_entry(
        b,
        img.config.digest,
        img.config.size,
        [{**img.layers[0].to_json(), "size": 2**62}],
    ),
    "layer-is-a-fifo": lambda b, img: _fifo_layer(b, img),
    "config-is-a-directory": lambda b, img: _dir_config(b, img),
}


def _fifo_layer(b: LayoutBuilder, img: BuiltImage) -> None:
    broken = b.image(name="fifo-layer", layers=[{"fifo": "x\n"}])
    b.tag(broken, "victim.example/broken:1")
    fifo_instead(b.blob_path(broken.layers[0].digest))


def _dir_config(b: LayoutBuilder, img: BuiltImage) -> None:
    broken = b.image(name="dir-config", layers=[{"dir": "x\n"}])
    b.tag(broken, "victim.example/broken:1")
    dir_instead(b.blob_path(broken.config.digest))


@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize("breaker", sorted(ENTRY_BREAKERS))
@pytest.mark.parametrize("when", ["at-start", "at-run-time"])
def test_a_broken_entry_costs_that_entry_only(
    breaker: str, when: str, tmp_path: Path, healthy: tuple[Path, BuiltImage]
) -> None:
    healthy_root, _ = healthy
    victim = _victim(tmp_path / "victim")

    def break_it() -> None:
        ENTRY_BREAKERS[breaker](victim.builder, victim.first)
        # the same index.json write brings a new healthy entry too
        late = victim.builder.image(name="late", layers=[{"late": "late\n"}])
        victim.builder.tag(late, "victim.example/late:1")
        victim.builder.write()

    if when == "at-start":
        break_it()
    config = _config(victim.root, healthy_root, snapshot=False, rescan_interval=0.2)
    with running_server(config) as shim:
        if when == "at-run-time":
            assert _served(shim, "victim.example/first:1")
            break_it()
            _wait_for(lambda: _served(shim, "victim.example/late:1"))
        assert not _served(shim, "victim.example/broken:1")
        for ref in ("victim.example/first:1", "victim.example/second:1", "victim.example/late:1"):
            assert _served(shim, ref), f"{ref} lost to a broken neighbour ({breaker}, {when})"
        assert _served(shim, GOOD)


@pytest.mark.timeout(TIMEOUT)
def test_a_fifo_appearing_at_run_time_does_not_freeze_re_indexing(
    tmp_path: Path, healthy: tuple[Path, BuiltImage]
) -> None:
    healthy_root, _ = healthy
    victim = _victim(tmp_path / "victim")
    index = victim.root / "index.json"
    good = index.read_bytes()
    config = _config(victim.root, healthy_root, snapshot=False, rescan_interval=0.2)
    with running_server(config) as shim:
        assert _served(shim, "victim.example/first:1")
        fifo_instead(index)
        _wait_for(lambda: not _served(shim, "victim.example/first:1"))
        # the FIFO did not block the watcher: a good index.json is picked up again
        late = victim.builder.image(name="late", layers=[{"late": "late\n"}])
        victim.builder.tag(late, "victim.example/late:1")
        index.unlink()
        victim.builder.write()
        _wait_for(lambda: _served(shim, "victim.example/late:1"))
        assert _served(shim, "victim.example/first:1")
        assert good != index.read_bytes()
        assert _served(shim, GOOD)


def test_a_backend_that_cannot_start_costs_that_backend_only(
    tmp_path: Path, healthy: tuple[Path, BuiltImage]
) -> None:
    # a missing layout is a config error (check-config); a store that cannot be
    # opened is found only when the backend starts
    healthy_root, image = healthy
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("not a store")
    config = {
        "backends": [
            {"name": "victim", "type": "registry-cache", "options": {"path": str(not_a_directory)}},
            {"name": "healthy", "type": "oci-dir", "options": {"path": str(healthy_root)}},
        ]
    }
    with running_server(config) as shim:
        assert shim.status(GOOD).image.id == image.id
        assert "victim" in shim.catalog.failed
        assert str(not_a_directory) in shim.catalog.failed["victim"]


def _wait_for(check: Callable[[], bool], timeout: float = 20) -> None:
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, "not within the wait"
        time.sleep(0.05)


def test_the_helpers_make_what_they_say(tmp_path: Path) -> None:
    assert json.loads(nesting_bomb(10)) == {"x": [[[[[[[[[[]]]]]]]]]]}
    with pytest.raises(RecursionError):
        json.loads(nesting_bomb())
    path = tmp_path / "f"
    path.write_text("x")
    fifo_instead(path)
    assert path.exists() and not path.is_file() and not path.is_dir()
    moved = symlink_out(tmp_path / "f", tmp_path / "out" / "f")
    assert (tmp_path / "f").is_symlink() and os.path.realpath(tmp_path / "f") == str(moved)
