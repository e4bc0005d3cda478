"""What is particular to the docker-archive backend: its archives, its faults."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
from crishim_docker_archive import DockerArchiveBackend, read_archive
from docker_save import SavedImage, save

from crishim.config import parse_settings
from crishim.container import make_application
from crishim.errors import BackendError
from crishim.manager import load_plugins
from crishim.testing.server import RunningShim, running_server

EXAMPLE = Path(__file__).resolve().parents[1]


def serve(root: Path, **config: Any) -> Any:
    options = {"path": str(root), **config.pop("options", {})}
    backends = [{"name": "saved", "type": "docker-archive", "options": options}]
    return running_server({"backends": backends, **config})


def tags(shim: RunningShim) -> list[list[str]]:
    return sorted(list(i.repo_tags) for i in shim.list())


def test_the_backend_type_comes_from_the_installed_entry_point() -> None:
    backend_type = load_plugins().backend_types()["docker-archive"]
    assert backend_type.package == "crishim-docker-archive"
    assert backend_type.factory is DockerArchiveBackend


def test_the_example_config_is_valid() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "crishim.cli", "check-config", str(EXAMPLE / "example.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "saved: type docker-archive (crishim-docker-archive 0.1.0)" in result.stdout


def test_broken_archives_are_skipped_and_the_rest_serve(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = SavedImage(tags=["example.com/good:1"])
    save(tmp_path / "good.tar", [good])
    (tmp_path / "not-a-tar.tar").write_bytes(b"this is not a tar file")
    save(tmp_path / "truncated.tar.gz", [SavedImage(tags=["example.com/cut:1"])], compress=True)
    data = (tmp_path / "truncated.tar.gz").read_bytes()
    (tmp_path / "truncated.tar.gz").write_bytes(data[: len(data) // 2])
    caplog.set_level(logging.WARNING, logger="crishim_docker_archive")
    with serve(tmp_path) as shim:
        assert tags(shim) == [["example.com/good:1"]]
        assert shim.status("example.com/good:1").image.id == good.id
    skipped = " ".join(r.getMessage() for r in caplog.records)
    assert "not-a-tar.tar" in skipped
    assert "truncated.tar.gz" in skipped


def _without(path: Path, dropped: str) -> None:
    """Rewrite the archive at ``path`` without its member ``dropped``."""
    with tarfile.open(path) as tar:
        kept = [
            (member, tar.extractfile(member).read())  # type: ignore[union-attr]
            for member in tar
            if member.isfile() and member.name != dropped
        ]
    with tarfile.open(path, "w") as tar:
        for member, data in kept:
            tar.addfile(member, io.BytesIO(data))


def test_a_broken_image_is_skipped_and_its_neighbours_serve(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ok = SavedImage(tags=["example.com/ok:1"], layers=[{"ok": "ok"}])
    gone = SavedImage(tags=["example.com/gone:1"], layers=[{"gone": "gone"}])
    path = save(tmp_path / "mixed.tar", [ok, gone])
    with tarfile.open(path) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    _without(path, manifest[1]["Layers"][0])
    caplog.set_level(logging.WARNING, logger="crishim_docker_archive")
    with serve(tmp_path) as shim:
        assert tags(shim) == [["example.com/ok:1"]]
        assert not shim.status(gone.id).HasField("image")
    assert any("is not in the archive" in r.getMessage() for r in caplog.records)


def test_a_config_that_does_not_match_its_name_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "lying.tar"
    config = json.dumps({"os": "linux"}).encode()
    with tarfile.open(path, "w") as tar:
        for name, data in (
            ("0" * 64 + ".json", config),
            ("manifest.json", json.dumps([{"Config": "0" * 64 + ".json", "Layers": []}]).encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    records, problems = read_archive(path)
    assert records == []
    assert "does not match its name" in problems[0]


def test_an_image_that_is_not_oci_compliant_is_hidden_by_the_default_filters(
    tmp_path: Path,
) -> None:
    odd = SavedImage(tags=["example.com/odd:1"], raw_config={"architecture": "amd64"})
    fine = SavedImage(tags=["example.com/fine:1"])
    save(tmp_path / "mixed.tar", [odd, fine])
    with serve(tmp_path) as shim:
        assert tags(shim) == [["example.com/fine:1"]]
        assert not shim.status("example.com/odd:1").HasField("image")
    with serve(tmp_path, filters=[]) as shim:
        assert tags(shim) == [["example.com/fine:1"], ["example.com/odd:1"]]


def test_rescans_pick_up_new_and_removed_archives(tmp_path: Path) -> None:
    save(tmp_path / "first.tar", [SavedImage(tags=["example.com/first:1"])])
    with serve(tmp_path, options={"rescan_interval": 0.1}) as shim:
        assert tags(shim) == [["example.com/first:1"]]
        save(tmp_path / "second.tar", [SavedImage(tags=["example.com/second:1"])])
        (tmp_path / "first.tar").unlink()
        deadline = time.monotonic() + 10
        while tags(shim) != [["example.com/second:1"]] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert tags(shim) == [["example.com/second:1"]]


def test_a_missing_directory_stops_start_up(tmp_path: Path) -> None:
    settings = parse_settings(
        {"backends": [{"name": "saved", "type": "docker-archive", "options": {"path": "nope"}}]},
        base_dir=tmp_path,
    )
    catalog = make_application(settings).catalog()
    with pytest.raises(BackendError, match="does not exist"):
        catalog.start()


def test_filesystem_usage_counts_the_archives(tmp_path: Path) -> None:
    save(tmp_path / "a.tar", [SavedImage(tags=["example.com/a:1"])])
    with serve(tmp_path) as shim:
        (usage,) = shim.fsinfo().image_filesystems
        assert usage.used_bytes.value > 0
        assert usage.inodes_used.value == 1
