"""Tests for the deterministic OCI layout builder and the example layout generator."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from crishim.testing.ocibuild import (
    CONTAINERD_NAME,
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    REF_NAME,
    File,
    LayoutBuilder,
    Symlink,
    canonical_json,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
GENERATOR = REPO_ROOT / "examples" / "make_example_layout.py"
COMMITTED_DEMO = REPO_ROOT / "examples" / "layouts" / "demo"


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _blob(root: Path, digest: str) -> bytes:
    algo, _, hexpart = digest.partition(":")
    return (root / "blobs" / algo / hexpart).read_bytes()


def test_blob_digests_and_sizes_match_content(tmp_path: Path) -> None:
    b = LayoutBuilder(tmp_path / "lay")
    img = b.image(layers=[{"a": "1"}, {"b/c": b"\x00\x01"}], user="7")
    idx = b.index([img, b.image(architecture="arm64", variant="v8")])
    b.tag(img, "x/img:1")
    b.tag(idx, "x/idx:1")
    root = b.write()

    blob_dir = root / "blobs" / "sha256"
    blobs = sorted(blob_dir.iterdir())
    assert blobs
    for path in blobs:
        assert _sha256(path.read_bytes()) == "sha256:" + path.name

    for desc in (img.manifest, img.config, *img.layers, idx.descriptor):
        data = _blob(root, desc.digest)
        assert len(data) == desc.size
        assert _sha256(data) == desc.digest

    # The manifest blob is exactly the canonical serialisation of manifest_json.
    assert _blob(root, img.manifest.digest) == canonical_json(img.manifest_json)
    assert json.loads(_blob(root, img.config.digest)) == img.config_json
    assert img.id == img.config.digest
    assert img.size == img.manifest.size + img.config.size + sum(d.size for d in img.layers)


def test_index_json_and_oci_layout(tmp_path: Path) -> None:
    b = LayoutBuilder(tmp_path / "lay")
    oci = b.image(name="oci", annotations={"org.opencontainers.image.title": "t"})
    dock = b.image(name="dock", user="1:2", docker=True)
    lst = b.index([dock], docker=True)
    b.tag(oci, "example.com/oci:1")
    b.tag(dock, "docker.io/library/dock:1", key=CONTAINERD_NAME, extra_annotations={"k": "v"})
    b.tag(lst, "example.com/list:1")
    b.add_raw_entry(
        {"mediaType": "application/x-unknown", "digest": "sha256:" + "0" * 64, "size": 1}
    )
    root = b.write()

    layout_bytes = (root / "oci-layout").read_bytes()
    assert json.loads(layout_bytes) == {"imageLayoutVersion": "1.0.0"}
    index_bytes = (root / "index.json").read_bytes()
    index = json.loads(index_bytes)
    # Byte-reproducible: sorted keys, compact separators.
    assert index_bytes == json.dumps(index, sort_keys=True, separators=(",", ":")).encode()
    assert index["schemaVersion"] == 2
    assert index["mediaType"] == OCI_INDEX

    m = index["manifests"]
    assert [e["mediaType"] for e in m] == [
        OCI_MANIFEST,
        DOCKER_MANIFEST,
        DOCKER_LIST,
        "application/x-unknown",
    ]
    assert m[0]["annotations"] == {REF_NAME: "example.com/oci:1"}
    assert m[0]["digest"] == oci.manifest.digest
    assert m[0]["platform"] == {"os": "linux", "architecture": "amd64"}
    assert m[1]["annotations"] == {CONTAINERD_NAME: "docker.io/library/dock:1", "k": "v"}
    assert m[2]["digest"] == lst.descriptor.digest

    oci_manifest = json.loads(_blob(root, oci.manifest.digest))
    assert oci_manifest["schemaVersion"] == 2
    assert oci_manifest["mediaType"] == OCI_MANIFEST
    assert oci_manifest["config"]["mediaType"] == OCI_CONFIG
    assert {d["mediaType"] for d in oci_manifest["layers"]} == {OCI_LAYER_GZIP}
    assert oci_manifest["annotations"] == {"org.opencontainers.image.title": "t"}

    dock_manifest = json.loads(_blob(root, dock.manifest.digest))
    assert dock_manifest["mediaType"] == DOCKER_MANIFEST
    assert dock_manifest["config"]["mediaType"] == DOCKER_CONFIG
    assert {d["mediaType"] for d in dock_manifest["layers"]} == {DOCKER_LAYER}
    config = json.loads(_blob(root, dock.config.digest))
    assert config["config"]["User"] == "1:2"
    assert config["rootfs"] == {"type": "layers", "diff_ids": dock.diff_ids}

    listing = json.loads(_blob(root, lst.descriptor.digest))
    assert listing["mediaType"] == DOCKER_LIST
    assert listing["manifests"][0]["platform"] == {"os": "linux", "architecture": "amd64"}


def test_layer_is_deterministic_and_diff_id_is_uncompressed_digest(tmp_path: Path) -> None:
    files: dict[str, bytes | str] = {"z/last": "z", "/a/b/c.txt": "hello", "m": b"\xff"}
    d1, diff1 = LayoutBuilder(tmp_path / "one").layer(files)
    # Same content, different insertion order and a different root.
    d2, diff2 = LayoutBuilder(tmp_path / "two").layer(dict(reversed(list(files.items()))))
    assert (d1.digest, d1.size, diff1) == (d2.digest, d2.size, diff2)

    gz = _blob(tmp_path / "one", d1.digest)
    assert gz[:2] == b"\x1f\x8b"
    assert gz[4:8] == b"\x00\x00\x00\x00"  # gzip MTIME
    tar_bytes = gzip.decompress(gz)
    assert _sha256(tar_bytes) == diff1
    assert diff1 != d1.digest

    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        members = tar.getmembers()
        names = [mem.name for mem in members]
        assert names == ["a", "a/b", "a/b/c.txt", "m", "z", "z/last"]
        for mem in members:
            assert (mem.mtime, mem.uid, mem.gid, mem.uname, mem.gname) == (0, 0, 0, "", "")
            assert mem.mode == (0o755 if mem.isdir() else 0o644)
        extracted = tar.extractfile("a/b/c.txt")
        assert extracted is not None
        assert extracted.read() == b"hello"


def test_layer_rejects_bad_paths(tmp_path: Path) -> None:
    b = LayoutBuilder(tmp_path / "lay")
    with pytest.raises(ValueError):
        b.layer({"../escape": "x"})
    with pytest.raises(ValueError):
        b.layer({"a": "file", "a/b": "child of a file"})
    with pytest.raises(ValueError):
        b.image(files={"a": "x"}, layers=[{"b": "y"}])


def _layer_members(builder: LayoutBuilder, digest: str) -> dict[str, tarfile.TarInfo]:
    tar_bytes = gzip.decompress(_blob(builder.root, digest))
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        return {m.name: m for m in tar.getmembers()}


def test_plain_values_keep_their_bytes(tmp_path: Path) -> None:
    """Layers of plain bytes/str values are byte-identical to what earlier versions made."""
    desc, diff_id = LayoutBuilder(tmp_path / "lay").layer(
        {"a": "1", "b/c/": "", "d/e": b"\x00" * 1000}
    )
    assert desc.digest == (
        "sha256:b726865d7457cfaa95c286174c40f5b6d2e46b5648ef5b4e2e2555daf702b4b8"
    )
    assert desc.media_type == OCI_LAYER_GZIP
    assert diff_id != desc.digest


def test_file_with_default_mode_equals_a_plain_value(tmp_path: Path) -> None:
    b = LayoutBuilder(tmp_path / "lay")
    plain, plain_diff = b.layer({"etc/x": "text", "bin/y": b"\x7fELF"})
    wrapped, wrapped_diff = b.layer({"etc/x": File("text"), "bin/y": File(b"\x7fELF")})
    assert (plain.digest, plain_diff) == (wrapped.digest, wrapped_diff)
    assert File("text", mode=0o644) == File("text")


def test_executables_and_symlinks_in_a_layer(tmp_path: Path) -> None:
    b = LayoutBuilder(tmp_path / "lay")
    desc, diff_id = b.layer(
        {
            "bin/tool": File(b"#!/bin/sh\necho hi\n", mode=0o755),
            "bin/sh": Symlink("tool"),
            "usr/bin/env": Symlink("/bin/tool"),
            "etc/secret": File("s", mode=0o600),
            "etc/plain": "p",
        }
    )
    members = _layer_members(b, desc.digest)
    assert sorted(members) == [
        "bin",
        "bin/sh",
        "bin/tool",
        "etc",
        "etc/plain",
        "etc/secret",
        "usr",
        "usr/bin",
        "usr/bin/env",
    ]
    tool = members["bin/tool"]
    assert tool.isreg() and tool.mode == 0o755 and tool.size == len(b"#!/bin/sh\necho hi\n")
    assert members["etc/secret"].mode == 0o600
    assert members["etc/plain"].mode == 0o644
    for name, target in (("bin/sh", "tool"), ("usr/bin/env", "/bin/tool")):
        link = members[name]
        assert link.issym(), name
        assert (link.linkname, link.size, link.mode) == (target, 0, 0o777)
    for member in members.values():
        assert (member.mtime, member.uid, member.gid, member.uname, member.gname) == (
            0,
            0,
            0,
            "",
            "",
        )
    # Deterministic: the same map in another order and another layout.
    again, again_diff = LayoutBuilder(tmp_path / "other").layer(
        {
            "etc/plain": "p",
            "etc/secret": File("s", mode=0o600),
            "usr/bin/env": Symlink("/bin/tool"),
            "bin/sh": Symlink("tool"),
            "bin/tool": File(b"#!/bin/sh\necho hi\n", mode=0o755),
        }
    )
    assert (again.digest, again_diff) == (desc.digest, diff_id)
    # The mode is part of the content: another mode is another layer.
    other, _ = b.layer({"bin/tool": File(b"#!/bin/sh\necho hi\n", mode=0o644)})
    assert other.digest != desc.digest


def test_extracted_layer_has_a_working_executable_and_link(tmp_path: Path) -> None:
    b = LayoutBuilder(tmp_path / "lay")
    desc, _ = b.layer(
        {"bin/hello": File(b"#!/bin/sh\necho hello\n", mode=0o755), "bin/hi": Symlink("hello")}
    )
    out = tmp_path / "rootfs"
    tar_bytes = gzip.decompress(_blob(b.root, desc.digest))
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        tar.extractall(out, filter="tar")
    assert (out / "bin/hi").is_symlink()
    assert (out / "bin/hi").readlink() == Path("hello")
    result = subprocess.run([str(out / "bin/hi")], capture_output=True, check=True)
    assert result.stdout == b"hello\n"


def test_images_take_files_and_symlinks(tmp_path: Path) -> None:
    b = LayoutBuilder(tmp_path / "lay")
    img = b.image(
        layers=[{"bin/busybox": File(b"bb", mode=0o755)}, {"bin/sh": Symlink("busybox")}],
        cmd=["sh"],
    )
    assert len(img.layers) == 2
    assert _layer_members(b, img.layers[1].digest)["bin/sh"].linkname == "busybox"
    assert img.config_json["config"] == {
        "Cmd": ["sh"],
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "User": "",
        "WorkingDir": "/",
    }


def test_bad_files_and_symlinks_are_refused(tmp_path: Path) -> None:
    b = LayoutBuilder(tmp_path / "lay")
    with pytest.raises(ValueError):
        File(b"x", mode=0o10000)
    with pytest.raises(ValueError):
        File(b"x", mode=-1)
    with pytest.raises(TypeError):
        File(123)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Symlink("")
    with pytest.raises(ValueError):
        Symlink("a\0b")
    with pytest.raises(ValueError):
        b.layer({"dir/": Symlink("x")})
    with pytest.raises(ValueError):
        b.layer({"dir/": File(b"")})
    with pytest.raises(ValueError):
        b.layer({"link": Symlink("x"), "link/child": "below a symlink"})
    with pytest.raises(TypeError):
        b.layer({"n": 1})  # type: ignore[dict-item]


def test_chain_id_single_and_three_layers(tmp_path: Path) -> None:
    b = LayoutBuilder(tmp_path / "lay")
    one = b.image(files={"only": "1"})
    assert one.chain_id == one.diff_ids[0]

    three = b.image(layers=[{"l0": "0"}, {"l1": "1"}, {"l2": "2"}])
    d0, d1, d2 = three.diff_ids
    c1 = "sha256:" + hashlib.sha256(f"{d0} {d1}".encode()).hexdigest()
    c2 = "sha256:" + hashlib.sha256(f"{c1} {d2}".encode()).hexdigest()
    assert three.chain_id == c2
    assert len({d0, d1, d2, c1, c2}) == 5


def test_shared_layers_are_stored_once(tmp_path: Path) -> None:
    b = LayoutBuilder(tmp_path / "lay")
    base: dict[str, bytes | str] = {"etc/os-release": "ID=test\n"}
    a = b.image(layers=[base, {"a": "a"}])
    c = b.image(layers=[base, {"c": "c"}], docker=True)
    assert a.layers[0].digest == c.layers[0].digest
    assert a.layers[0].media_type != c.layers[0].media_type
    assert a.id != c.id
    b.write()

    expected = {a.manifest.digest, a.config.digest, c.manifest.digest, c.config.digest}
    expected |= {d.digest for d in (*a.layers, *c.layers)}
    assert len(expected) == 7  # 2 manifests + 2 configs + 3 distinct layers
    on_disk = {"sha256:" + p.name for p in (tmp_path / "lay" / "blobs" / "sha256").iterdir()}
    assert on_disk == expected


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    root = tmp_path / "lay"
    b = LayoutBuilder(root)
    img = b.image(name="first")
    b.tag(img, "x/a:1")
    b.write()
    first = (root / "index.json").read_bytes()

    b.blob(b"again", "application/octet-stream")
    b.blob(b"again", "application/octet-stream")
    b.tag(img, "x/a:2")
    b.write()
    assert (root / "index.json").read_bytes() != first
    assert len(json.loads((root / "index.json").read_bytes())["manifests"]) == 2

    leftovers = [p for p in root.rglob("*") if p.name.startswith(".") or "tmp" in p.name]
    assert leftovers == []
    assert sorted(p.name for p in root.iterdir()) == ["blobs", "index.json", "oci-layout"]


def test_same_calls_give_same_bytes(tmp_path: Path) -> None:
    def build(root: Path) -> None:
        b = LayoutBuilder(root)
        imgs = [
            b.image(files={"f": arch}, architecture=arch, variant=var, user="1")
            for arch, var in (("amd64", None), ("arm64", "v8"))
        ]
        b.tag(b.index(imgs, annotations={"a": "b"}), "x/multi:1")
        b.write()

    build(tmp_path / "a")
    build(tmp_path / "b")
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")


def _run_generator(out: Path) -> str:
    proc = subprocess.run(
        [sys.executable, str(GENERATOR), str(out)],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO_ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_example_generator_is_reproducible(tmp_path: Path) -> None:
    out1, out2 = tmp_path / "one" / "demo", tmp_path / "two" / "demo"
    _run_generator(out1)
    _run_generator(out2)
    (out2 / "stale-file").write_text("x")  # must be removed by a rerun
    stdout = _run_generator(out2)
    assert "example.com/crishim/hello:1.0" in stdout

    tree1, tree2 = _tree(out1), _tree(out2)
    assert tree1 == tree2
    assert not any(name.startswith(".") for name in tree1)
    assert sorted(p.name for p in out1.parent.iterdir()) == ["demo"]  # temp dir renamed away
    # Committed blobs must stay tiny.
    assert max(len(data) for data in tree1.values()) < 8192

    if COMMITTED_DEMO.is_dir():
        assert _tree(COMMITTED_DEMO) == tree1, (
            "examples/layouts/demo is stale: rerun python examples/make_example_layout.py"
        )


def test_example_layout_contents(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    _run_generator(out)
    index = json.loads((out / "index.json").read_bytes())
    by_name: dict[str, dict[str, object]] = {}
    for entry in index["manifests"]:
        ann = entry["annotations"]
        by_name[ann.get(REF_NAME) or ann[CONTAINERD_NAME]] = entry

    def config_user(entry: dict[str, object]) -> str:
        manifest = json.loads(_blob(out, str(entry["digest"])))
        config = json.loads(_blob(out, manifest["config"]["digest"]))
        return str(config["config"]["User"])

    hello = "example.com/crishim/hello"
    digests = {by_name[f"{hello}:{t}"]["digest"] for t in ("1.0", "1.1", "stable")}
    assert len(digests) == 1
    assert by_name["latest"]["digest"] in digests
    assert config_user(by_name[f"{hello}:1.0"]) == "1002"
    assert config_user(by_name["example.com/crishim/web:1.0"]) == "www-data"
    assert config_user(by_name["example.com/crishim/tools:1.0"]) == "1003:1004"
    app = by_name["example.com/crishim/app:1.0"]
    assert app["mediaType"] == DOCKER_MANIFEST
    assert config_user(app) == "www-data:1004"

    pause = [e for e in index["manifests"] if CONTAINERD_NAME in e["annotations"]]
    assert [e["annotations"][CONTAINERD_NAME] for e in pause] == [
        "docker.io/library/pause-demo:3.9"
    ]
    assert REF_NAME not in pause[0]["annotations"]

    multi = by_name["example.com/crishim/multi:1.0"]
    assert multi["mediaType"] == OCI_INDEX
    children = json.loads(_blob(out, str(multi["digest"])))["manifests"]
    platforms = [c["platform"] for c in children]
    assert platforms == [
        {"os": "linux", "architecture": "amd64"},
        {"os": "linux", "architecture": "arm64", "variant": "v8"},
        {"os": "linux", "architecture": "arm", "variant": "v7"},
    ]
    assert len({c["digest"] for c in children}) == 3
    assert {config_user(c) for c in children} == {""}
