"""``crishim import``: OCI layouts (directory or tar) and ``docker save`` archives,
into the registry-cache store and into a real containerd."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import yaml
from containerd.images import write_oci_tar
from containerd.process import ContainerdProcess
from registry.helpers import check_store

from crishim.testing.ocibuild import BuiltImage, LayoutBuilder

pytest_plugins = ["containerd.fixtures"]


def crishim(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crishim.cli", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _config(tmp_path: Path, backend: dict[str, Any]) -> Path:
    path = tmp_path / "crishim.yaml"
    config = {"backends": [backend], "state_dir": str(tmp_path / "state")}
    path.write_text(yaml.safe_dump(config))
    return path


def _cache(tmp_path: Path) -> tuple[Path, Path]:
    store = tmp_path / "store"
    backend = {"name": "cache", "type": "registry-cache", "options": {"path": str(store)}}
    return _config(tmp_path, backend), store


def stored(store: Path) -> dict[str, str]:
    """The store's names (checked valid); none when it was never created."""
    return check_store(store) if (store / "index.json").exists() else {}


def _layout(root: Path) -> tuple[Path, BuiltImage, BuiltImage, BuiltImage]:
    """Two named images and one that only a bare-tag ref.name names."""
    b = LayoutBuilder(root)
    app = b.image(name="app", user="1000", layers=[{"app": "app\n"}, {"data": "d" * 500}])
    b.tag(app, "example.com/import/app:1", key="io.containerd.image.name")
    b.tag(app, "example.com/import/app:stable", key="io.containerd.image.name")
    web = b.image(name="web", user="www-data")
    b.tag(web, "example.com/import/web:2")
    bare = b.image(name="bare")
    b.tag(bare, "latest")
    return b.write(), app, web, bare


def test_oci_layout_directory_into_the_cache(tmp_path: Path) -> None:
    config, store = _cache(tmp_path)
    layout, app, web, bare = _layout(tmp_path / "layout")
    done = crishim("import", "--config", str(config), str(layout))
    # one image is named by a bare tag only: nothing is imported without --name
    assert done.returncode == 2, done.stderr
    assert bare.manifest.digest in done.stderr and "--name" in done.stderr
    assert stored(store) == {}
    # a layout of the named images imports them with every name
    single = tmp_path / "named"
    b = LayoutBuilder(single)
    app2 = b.image(name="app", user="1000", layers=[{"app": "app\n"}, {"data": "d" * 500}])
    assert app2.id == app.id
    b.tag(app2, "example.com/import/app:1", key="io.containerd.image.name")
    b.tag(app2, "example.com/import/app:stable", key="io.containerd.image.name")
    web2 = b.image(name="web", user="www-data")
    b.tag(web2, "example.com/import/web:2")
    b.write()
    done = crishim("import", "--config", str(config), str(single))
    assert done.returncode == 0, done.stderr
    lines = sorted(done.stdout.split("\n")[:-1])
    assert lines == sorted(
        [
            f"{app.id}  example.com/import/app:1",
            f"{app.id}  example.com/import/app:stable",
            f"{web.id}  example.com/import/web:2",
        ]
    )
    names = check_store(store)
    assert {
        "example.com/import/app:1",
        "example.com/import/app:stable",
        f"example.com/import/app@{app.manifest.digest}",
        "example.com/import/web:2",
    } <= set(names)
    listed = crishim("images", "-q", "--config", str(config))
    assert sorted(listed.stdout.split()) == sorted([app.id, web.id])


def test_name_for_a_layout_of_one_image(tmp_path: Path) -> None:
    config, store = _cache(tmp_path)
    b = LayoutBuilder(tmp_path / "one")
    image = b.image(name="solo")
    b.tag(image, "v3")  # a bare tag: no repository
    b.write()
    done = crishim(
        "import", "-q", "--config", str(config), "--name", "example.com/solo:v3", str(b.root)
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [image.id]
    assert "example.com/solo:v3" in check_store(store)
    # --name names one image: a layout of several is refused
    layout, *_ = _layout(tmp_path / "several")
    refused = crishim("import", "--config", str(config), "--name", "x.example/y:1", str(layout))
    assert refused.returncode == 2
    assert "holds 3 images" in refused.stderr


def _docker_save(path: Path, image: BuiltImage, layout: Path, tags: list[str]) -> Path:
    """A legacy ``docker save`` archive of ``image`` (uncompressed layer tars)."""

    def blob(digest: str) -> bytes:
        return (layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()

    members: dict[str, bytes] = {}
    config = blob(image.config.digest)
    members[f"{image.config.digest.removeprefix('sha256:')}.json"] = config
    layer_names = []
    for i, layer in enumerate(image.layers):
        name = f"layer{i}/layer.tar"
        members[name] = gzip.decompress(blob(layer.digest))
        layer_names.append(name)
    members["manifest.json"] = json.dumps(
        [
            {
                "Config": f"{image.config.digest.removeprefix('sha256:')}.json",
                "RepoTags": tags,
                "Layers": layer_names,
            }
        ]
    ).encode()
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_legacy_docker_save_archive(tmp_path: Path) -> None:
    config, store = _cache(tmp_path)
    b = LayoutBuilder(tmp_path / "src")
    image = b.image(name="legacy", user="0", layers=[{"a": "a\n"}, {"b": "b" * 300}])
    b.write()
    archive = _docker_save(tmp_path / "legacy.tar", image, b.root, ["legacy.example/app:1"])
    done = crishim("import", "-q", "--config", str(config), str(archive))
    assert done.returncode == 0, done.stderr
    # the same image ID: the config is the archive's, byte for byte
    assert done.stdout.split() == [image.id]
    names = check_store(store)
    assert "legacy.example/app:1" in names


def test_a_tampered_layer_is_refused_and_nothing_is_kept(tmp_path: Path) -> None:
    config, store = _cache(tmp_path)
    b = LayoutBuilder(tmp_path / "src")
    image = b.image(name="tampered", layers=[{"a": "original\n"}])
    b.write()
    archive = _docker_save(tmp_path / "t.tar", image, b.root, ["tampered.example/app:1"])
    # swap the layer for another of the same length
    with tarfile.open(archive) as tar:
        members = {}
        for member in tar.getmembers():
            stream = tar.extractfile(member)
            if stream is not None:
                members[member.name] = stream.read()
    layer = next(n for n in members if n.endswith("layer.tar"))
    members[layer] = members[layer].replace(b"original", b"modified")
    with tarfile.open(archive, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    done = crishim("import", "--config", str(config), str(archive))
    assert done.returncode == 1
    assert "digest" in done.stderr
    assert stored(store) == {}
    # and the bytes went nowhere: no committed blob holds "modified"
    committed = [p for p in (store / "blobs").rglob("*") if p.is_file()]
    assert all(b"modified" not in p.read_bytes() for p in committed)


def test_a_layout_symlink_leading_outside_is_refused(tmp_path: Path) -> None:
    config, store = _cache(tmp_path)
    b = LayoutBuilder(tmp_path / "layout")
    image = b.image(name="escape")
    b.tag(image, "escape.example/app:1", key="io.containerd.image.name")
    b.write()
    outside = tmp_path / "outside"
    outside.mkdir()
    config_blob = b.blob_path(image.config.digest)
    (outside / config_blob.name).write_bytes(config_blob.read_bytes())
    config_blob.unlink()
    config_blob.symlink_to(outside / config_blob.name)
    done = crishim("import", "--config", str(config), str(b.root))
    assert done.returncode == 1
    assert "outside the layout" in done.stderr
    assert stored(store) == {}


def test_oci_tar_into_containerd(tmp_path: Path, fresh_containerd: ContainerdProcess) -> None:
    b = LayoutBuilder(tmp_path / "layout")
    image = b.image(name="imported", layers=[{"imported": "into containerd\n"}])
    b.tag(image, "import.example/app:1", key="io.containerd.image.name")
    tar = write_oci_tar(b.write(), tmp_path / "image.tar")
    backend = {
        "name": "node",
        "type": "containerd",
        "options": {"address": f"unix://{fresh_containerd.address}"},
    }
    config = _config(tmp_path, backend)
    done = crishim("import", "-q", "--config", str(config), str(tar))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [image.id]
    listed = set(fresh_containerd.ctr("images", "ls", "-q").split())
    wanted = {"import.example/app:1", f"import.example/app@{image.manifest.digest}", image.id}
    assert wanted <= listed


def test_import_for_a_runtime_handler_lands_in_its_backend(tmp_path: Path) -> None:
    default_store, vm_store = tmp_path / "store", tmp_path / "vm-store"
    path = tmp_path / "crishim.yaml"
    config = {
        "state_dir": str(tmp_path / "state"),
        "backends": [
            {"name": "cache", "type": "registry-cache", "options": {"path": str(default_store)}},
            {
                "name": "vm",
                "type": "registry-cache",
                "options": {"path": str(vm_store)},
                "runtime_handlers": ["kata-arm64"],
                "platform": {"os": "linux", "architecture": "arm64"},
            },
        ],
    }
    path.write_text(yaml.safe_dump(config))
    b = LayoutBuilder(tmp_path / "layout")
    app = b.image(name="app", architecture="arm64")
    b.tag(app, "example.com/import/app:1")
    b.write()
    done = crishim("import", "--config", str(path), "--runtime-handler", "kata-arm64", str(b.root))
    assert done.returncode == 0, done.stderr
    assert "example.com/import/app:1" in stored(vm_store)
    assert stored(default_store) == {}
    for command in ("import", "pull"):
        target = str(b.root) if command == "import" else "example.com/import/app:1"
        done = crishim(command, "--config", str(path), "--runtime-handler", "kata", target)
        assert done.returncode == 2, done.stderr
        assert "runtime handler 'kata' is not served" in done.stderr
        assert "'kata-arm64'" in done.stderr
        assert "Traceback" not in done.stderr
