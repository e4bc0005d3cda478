"""The ``oci-dir`` backend end to end: platforms, media types, names, broken
layouts and two backends, each through a real server over a unix socket."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import PLATFORM, backend, image_bytes, make_config

from crishim.testing.ocibuild import (
    CONTAINERD_NAME,
    OCI_CONFIG,
    OCI_MANIFEST,
    REF_NAME,
    BuiltImage,
    LayoutBuilder,
    canonical_json,
    write_json_blob,
)
from crishim.testing.server import RunningShim

Server = Callable[..., RunningShim]
Layouts = Callable[..., LayoutBuilder]


def _serve(crishim_server: Server, *builders: LayoutBuilder, **kwargs: Any) -> RunningShim:
    backends = [backend(chr(ord("a") + i), b.root) for i, b in enumerate(builders)]
    return crishim_server(make_config(*backends, **kwargs))


def _ids(shim: RunningShim) -> set[str]:
    return {image.id for image in shim.list()}


# --------------------------------------------------------------------------- platforms


@pytest.mark.parametrize(
    ("platform", "chosen"),
    [
        (PLATFORM, "arm64"),
        ({"os": "linux", "architecture": "arm64"}, "arm64"),
        ({"os": "linux", "architecture": "amd64"}, "amd64"),
        ({"os": "linux", "architecture": "arm", "variant": "v7"}, "arm"),
    ],
    ids=["arm64-v8", "arm64-no-variant", "amd64", "arm-v7"],
)
def test_index_resolved_to_configured_platform(
    crishim_server: Server, oci_layout: Layouts, platform: dict[str, str], chosen: str
) -> None:
    b = oci_layout()
    images = {
        "amd64": b.image(name="m", architecture="amd64"),
        "arm64": b.image(name="m", architecture="arm64", variant="v8", files={"a": "x" * 500}),
        "arm": b.image(name="m", architecture="arm", variant="v7", layers=[{"a": "1"}, {"b": "2"}]),
    }
    assert len({i.size for i in images.values()}) == 3
    b.tag(b.index(list(images.values())), "example.com/multi:1")
    b.write()
    shim = _serve(crishim_server, b, platform=platform)
    image = shim.status("example.com/multi:1").image
    assert image.id == images[chosen].id
    assert image.size == images[chosen].size
    assert _ids(shim) == {images[chosen].id}
    for other, built in images.items():
        if other != chosen:
            assert not shim.status(built.id).HasField("image")


def test_exact_variant_preferred_over_variantless(
    crishim_server: Server, oci_layout: Layouts
) -> None:
    b = oci_layout()
    plain = b.image(name="plain", architecture="arm64")
    v8 = b.image(name="v8", architecture="arm64", variant="v8")
    b.tag(b.index([plain, v8]), "example.com/multi:1")
    b.write()
    shim = _serve(crishim_server, b)
    assert shim.status("example.com/multi:1").image.id == v8.id


def test_arm64_index_entry_without_variant_serves_v8(
    crishim_server: Server, oci_layout: Layouts
) -> None:
    b = oci_layout()
    amd = b.image(name="m", architecture="amd64")
    arm = b.image(name="m", architecture="arm64")
    b.tag(b.index([amd, arm]), "example.com/multi:1")
    b.write()
    shim = _serve(crishim_server, b)
    assert shim.status("example.com/multi:1").image.id == arm.id


def test_index_without_configured_platform_is_skipped(
    crishim_server: Server, oci_layout: Layouts
) -> None:
    b = oci_layout()
    good = b.image(name="good")
    b.tag(good, "example.com/good:1")
    amd = b.image(name="m", architecture="amd64")
    s390 = b.image(name="m", architecture="s390x")
    b.tag(b.index([amd, s390]), "example.com/multi:1")
    b.write()
    shim = _serve(crishim_server, b)
    assert not shim.status("example.com/multi:1").HasField("image")
    assert shim.status("example.com/good:1").image.id == good.id
    assert _ids(shim) == {good.id}


# --------------------------------------------------------------------------- media types


def test_docker_schema2_media_types(crishim_server: Server, oci_layout: Layouts) -> None:
    b = oci_layout(docker_media_types=True)
    single = b.image(name="single", user="33")
    b.tag(single, "example.com/docker-single:1")
    amd = b.image(name="list", architecture="amd64")
    arm = b.image(name="list", architecture="arm64", variant="v8", files={"x": "arm64\n" * 9})
    manifest_list = b.index([amd, arm])
    b.tag(manifest_list, "example.com/docker-list:1")
    b.write()
    assert single.manifest.media_type == "application/vnd.docker.distribution.manifest.v2+json"
    assert manifest_list.descriptor.media_type.endswith("manifest.list.v2+json")

    shim = _serve(crishim_server, b)
    image = shim.status("example.com/docker-single:1").image
    assert image.id == single.id
    assert image.size == single.size
    assert image.uid.value == 33
    assert list(image.repo_digests) == [f"example.com/docker-single@{single.manifest.digest}"]

    listed = shim.status("example.com/docker-list:1").image
    assert listed.id == arm.id
    assert listed.size == arm.size
    assert list(listed.repo_digests) == [
        f"example.com/docker-list@{manifest_list.descriptor.digest}"
    ]
    assert _ids(shim) == {single.id, arm.id}


def test_mixed_media_types_in_one_layout(crishim_server: Server, oci_layout: Layouts) -> None:
    b = oci_layout()
    oci = b.image(name="oci")
    docker = b.image(name="docker", docker=True)
    b.tag(oci, "example.com/oci:1")
    b.tag(docker, "example.com/docker:1")
    b.write()
    shim = _serve(crishim_server, b)
    assert shim.status("example.com/oci:1").image.id == oci.id
    assert shim.status("example.com/docker:1").image.id == docker.id


# --------------------------------------------------------------------------- names


def test_containerd_name_annotation(crishim_server: Server, oci_layout: Layouts) -> None:
    b = oci_layout()
    redis = b.image(name="redis")
    b.tag(redis, "docker.io/library/redis:7", key=CONTAINERD_NAME)
    b.tag(redis, "quay.io/org/redis:7.2", key=CONTAINERD_NAME)
    b.write()
    shim = _serve(crishim_server, b)
    image = shim.status("redis:7").image
    assert image.id == redis.id
    assert sorted(image.repo_tags) == ["docker.io/library/redis:7", "quay.io/org/redis:7.2"]
    assert sorted(image.repo_digests) == sorted(
        f"{repo}@{redis.manifest.digest}"
        for repo in ("docker.io/library/redis", "quay.io/org/redis")
    )
    assert shim.status("quay.io/org/redis:7.2").image.id == redis.id


def test_both_name_annotations_on_one_entry(crishim_server: Server, oci_layout: Layouts) -> None:
    b = oci_layout()
    img = b.image(name="both")
    b.tag(
        img,
        "example.com/oci-name:1",
        extra_annotations={CONTAINERD_NAME: "example.com/containerd-name:2"},
    )
    b.write()
    shim = _serve(crishim_server, b)
    image = shim.status(img.id).image
    assert sorted(image.repo_tags) == ["example.com/containerd-name:2", "example.com/oci-name:1"]


@pytest.mark.parametrize(
    ("repository", "expected_repo"),
    [
        ("example.com/team/app", "example.com/team/app"),
        ("localhost:5000/app", "localhost:5000/app"),
        ("app", "docker.io/library/app"),
        ("docker.io/user/app", "docker.io/user/app"),
    ],
    ids=["registry", "host-port", "official-short", "user-repo"],
)
def test_bare_tag_ref_name_uses_repository_option(
    crishim_server: Server, oci_layout: Layouts, repository: str, expected_repo: str
) -> None:
    b = oci_layout()
    v2 = b.image(name="v2")
    full = b.image(name="full")
    b.tag(v2, "v2")
    b.tag(full, "example.com/other:1")  # a full name is kept as it is
    b.write()
    shim = crishim_server(make_config(backend("a", b.root, repository=repository)))
    image = shim.status(f"{expected_repo}:v2").image
    assert image.id == v2.id
    assert list(image.repo_tags) == [f"{expected_repo}:v2"]
    assert list(image.repo_digests) == [f"{expected_repo}@{v2.manifest.digest}"]
    assert list(shim.status(full.id).image.repo_tags) == ["example.com/other:1"]


def test_entry_without_name_is_served_by_id_only(
    crishim_server: Server, oci_layout: Layouts
) -> None:
    b = oci_layout()
    anon = b.image(name="anon")
    b.add_raw_entry(anon.manifest.to_json())
    b.add_raw_entry({**anon.manifest.to_json(), "annotations": {"org.example/other": "x"}})
    b.write()
    shim = _serve(crishim_server, b)
    image = shim.status(anon.id).image
    assert image.id == anon.id
    assert list(image.repo_tags) == []
    assert list(image.repo_digests) == []
    assert image.size == anon.size
    (listed,) = shim.list()
    assert image_bytes(listed) == image_bytes(image)


# --------------------------------------------------------------------------- broken layouts

BROKEN_NAME = "example.com/broken:1"


@dataclass
class Broken:
    """What a breaker did: image IDs that must now be absent, and a step after write()."""

    ids: list[str] = field(default_factory=list)
    after_write: Callable[[], None] | None = None


def _same_length_change(path: Path, old: bytes, new: bytes) -> None:
    """Overwrite ``path`` with ``old`` replaced by ``new`` (same length: only the hash differs)."""
    assert len(old) == len(new)
    data = path.read_bytes()
    assert old in data, (old, data[:200])
    changed = data.replace(old, new, 1)
    json.loads(changed)  # still valid JSON
    path.write_bytes(changed)


def _symlink_outside(b: LayoutBuilder, digest: str) -> None:
    """Replace the blob with a symlink to an identical copy outside the layout."""
    blob = b.blob_path(digest)
    outside = b.root.parent / "outside" / blob.name
    outside.parent.mkdir(exist_ok=True)
    shutil.copyfile(blob, outside)
    blob.unlink()
    blob.symlink_to(outside)


def _manifest_with_config(
    b: LayoutBuilder, config_descriptor: dict[str, object], base: BuiltImage
) -> dict[str, object]:
    """Write a manifest with ``base``'s layers and the given config descriptor; index entry."""
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_descriptor,
        "layers": [layer.to_json() for layer in base.layers],
    }
    desc = write_json_blob(b, manifest, OCI_MANIFEST)
    return {**desc.to_json(), "annotations": {REF_NAME: BROKEN_NAME}}


def missing_manifest(b: LayoutBuilder) -> Broken:
    img = b.image(name="broken")
    b.tag(img, BROKEN_NAME)
    return Broken([img.id], lambda: b.blob_path(img.manifest.digest).unlink())


def missing_config(b: LayoutBuilder) -> Broken:
    img = b.image(name="broken")
    b.tag(img, BROKEN_NAME)
    return Broken([img.id], lambda: b.blob_path(img.config.digest).unlink())


def missing_layer(b: LayoutBuilder) -> Broken:
    img = b.image(name="broken", layers=[{"a": "1"}, {"b": "2"}])
    b.tag(img, BROKEN_NAME)
    return Broken([img.id], lambda: b.blob_path(img.layers[1].digest).unlink())


def bad_json_manifest(b: LayoutBuilder) -> Broken:
    desc = b.blob(b'{"schemaVersion": 2, "config": ', OCI_MANIFEST)
    b.add_raw_entry({**desc.to_json(), "annotations": {REF_NAME: BROKEN_NAME}})
    return Broken()


def bad_json_config(b: LayoutBuilder) -> Broken:
    base = b.image(name="broken-base")
    config = b.blob(b"this is not JSON", OCI_CONFIG)
    b.add_raw_entry(_manifest_with_config(b, config.to_json(), base))
    return Broken([config.digest])


def manifest_not_an_object(b: LayoutBuilder) -> Broken:
    desc = b.blob(b'["schemaVersion", 2]', OCI_MANIFEST)
    b.add_raw_entry({**desc.to_json(), "annotations": {REF_NAME: BROKEN_NAME}})
    return Broken()


def unknown_entry_media_type(b: LayoutBuilder) -> Broken:
    img = b.image(name="broken")
    entry = {**img.manifest.to_json(), "mediaType": "application/vnd.example.thing.v1+json"}
    b.add_raw_entry({**entry, "annotations": {REF_NAME: BROKEN_NAME}})
    return Broken([img.id])


def unknown_config_media_type(b: LayoutBuilder) -> Broken:
    img = b.image(name="broken")
    config = {**img.config.to_json(), "mediaType": "application/vnd.example.artifact.v1+json"}
    b.add_raw_entry(_manifest_with_config(b, config, img))
    return Broken([img.id])


def manifest_digest_mismatch(b: LayoutBuilder) -> Broken:
    img = b.image(name="broken")
    b.tag(img, BROKEN_NAME)
    path = b.blob_path(img.manifest.digest)
    return Broken(
        [img.id], lambda: _same_length_change(path, b'"schemaVersion":2', b'"schemaVersion":3')
    )


def config_digest_mismatch(b: LayoutBuilder) -> Broken:
    img = b.image(name="broken")
    b.tag(img, BROKEN_NAME)
    path = b.blob_path(img.config.digest)
    return Broken(
        [img.id], lambda: _same_length_change(path, b'"created":"2024', b'"created":"2025')
    )


def digest_escapes_blobs_in_index(b: LayoutBuilder) -> Broken:
    b.add_raw_entry(
        {
            "mediaType": OCI_MANIFEST,
            "digest": "sha256:../../etc/passwd",
            "size": 100,
            "annotations": {REF_NAME: BROKEN_NAME},
        }
    )
    return Broken()


def digest_escapes_blobs_in_manifest(b: LayoutBuilder) -> Broken:
    img = b.image(name="broken")
    # a real config file outside the layout, named by a path instead of a hash
    outside = b.root.parent / "outside-config.json"
    outside.parent.mkdir(parents=True, exist_ok=True)
    outside.write_bytes(canonical_json(img.config_json))
    config = {**img.config.to_json(), "digest": "sha256:../../../outside-config.json"}
    b.add_raw_entry(_manifest_with_config(b, config, img))
    return Broken([img.id])


def manifest_symlink_outside(b: LayoutBuilder) -> Broken:
    img = b.image(name="broken")
    b.tag(img, BROKEN_NAME)
    return Broken([img.id], lambda: _symlink_outside(b, img.manifest.digest))


def config_symlink_outside(b: LayoutBuilder) -> Broken:
    img = b.image(name="broken")
    b.tag(img, BROKEN_NAME)
    return Broken([img.id], lambda: _symlink_outside(b, img.config.digest))


def layer_symlink_outside(b: LayoutBuilder) -> Broken:
    img = b.image(name="broken")
    b.tag(img, BROKEN_NAME)
    return Broken([img.id], lambda: _symlink_outside(b, img.layers[0].digest))


def entry_size_wrong(b: LayoutBuilder) -> Broken:
    img = b.image(name="broken")
    entry = {**img.manifest.to_json(), "size": img.manifest.size + 1}
    b.add_raw_entry({**entry, "annotations": {REF_NAME: BROKEN_NAME}})
    return Broken([img.id])


def layer_size_wrong(b: LayoutBuilder) -> Broken:
    img = b.image(name="broken")
    layers = [{**img.layers[0].to_json(), "size": img.layers[0].size + 7}]
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": img.config.to_json()}
    desc = write_json_blob(b, {**manifest, "layers": layers}, OCI_MANIFEST)
    b.add_raw_entry({**desc.to_json(), "annotations": {REF_NAME: BROKEN_NAME}})
    return Broken([img.id])


def entry_annotations_not_an_object(b: LayoutBuilder) -> Broken:
    img = b.image(name="broken")
    b.add_raw_entry({**img.manifest.to_json(), "annotations": [REF_NAME, BROKEN_NAME]})
    return Broken([img.id])


def index_platform_not_an_object(b: LayoutBuilder) -> Broken:
    img = b.image(name="broken", architecture="arm64", variant="v8")
    index = b.index([img])
    broken_index = {**index.index_json, "manifests": [{**img.manifest.to_json(), "platform": "x"}]}
    desc = write_json_blob(b, broken_index, index.descriptor.media_type)
    b.add_raw_entry({**desc.to_json(), "annotations": {REF_NAME: BROKEN_NAME}})
    return Broken([img.id])


BREAKERS = [
    missing_manifest,
    missing_config,
    missing_layer,
    bad_json_manifest,
    bad_json_config,
    manifest_not_an_object,
    unknown_entry_media_type,
    unknown_config_media_type,
    manifest_digest_mismatch,
    config_digest_mismatch,
    digest_escapes_blobs_in_index,
    digest_escapes_blobs_in_manifest,
    manifest_symlink_outside,
    config_symlink_outside,
    layer_symlink_outside,
    entry_size_wrong,
    layer_size_wrong,
    # malformed index.json entries: one must not keep the whole server from starting
    entry_annotations_not_an_object,
    index_platform_not_an_object,
]


@pytest.mark.parametrize("breaker", BREAKERS, ids=[f.__name__.replace("_", "-") for f in BREAKERS])
def test_broken_entry_is_skipped(
    crishim_server: Server, oci_layout: Layouts, breaker: Callable[[LayoutBuilder], Broken]
) -> None:
    b = oci_layout()
    before = b.image(name="good-before", user="1002")
    b.tag(before, "example.com/good:before")
    broken = breaker(b)
    after = b.image(name="good-after")
    b.tag(after, "example.com/good:after")
    b.write()
    if broken.after_write is not None:
        broken.after_write()

    shim = _serve(crishim_server, b)  # the server starts
    for built, name in ((before, "example.com/good:before"), (after, "example.com/good:after")):
        image = shim.status(name).image
        assert image.id == built.id
        assert image.size == built.size
        assert list(image.repo_tags) == [name]
    assert not shim.status(BROKEN_NAME).HasField("image")
    for image_id in broken.ids:
        assert not shim.status(image_id).HasField("image")
    assert _ids(shim) == {before.id, after.id}
    assert shim.list(BROKEN_NAME) == []


def test_cached_blob_does_not_skip_the_size_check(
    crishim_server: Server, oci_layout: Layouts
) -> None:
    """A second entry naming a good manifest with a wrong size is still refused.

    The first entry reads and caches the manifest; the second one's
    descriptor disagrees with the blob's size and must be skipped all the
    same (the check is per descriptor, not per blob).
    """
    b = oci_layout()
    img = b.image(name="shared")
    b.tag(img, "example.com/good:1")
    wrong = {**img.manifest.to_json(), "size": img.manifest.size + 1}
    b.add_raw_entry({**wrong, "annotations": {REF_NAME: BROKEN_NAME}})
    b.write()
    shim = _serve(crishim_server, b)
    assert list(shim.status(img.id).image.repo_tags) == ["example.com/good:1"]
    assert not shim.status(BROKEN_NAME).HasField("image")


def test_broken_whole_layout_does_not_stop_other_backends(
    crishim_server: Server, oci_layout: Layouts
) -> None:
    broken = oci_layout("broken")
    img = broken.image(name="x")
    broken.tag(img, "example.com/x:1")
    broken.write()
    (broken.root / "index.json").write_bytes(b"{not json")
    good = oci_layout("good")
    good_img = good.image(name="good")
    good.tag(good_img, "example.com/good:1")
    good.write()
    shim = _serve(crishim_server, broken, good)
    assert shim.status("example.com/good:1").image.id == good_img.id
    assert not shim.status("example.com/x:1").HasField("image")
    assert _ids(shim) == {good_img.id}


# --------------------------------------------------------------------------- two backends


@dataclass
class TwoLayouts:
    a: LayoutBuilder
    b: LayoutBuilder
    shared: BuiltImage  # in both (same ID), named differently in each
    only_a: BuiltImage
    only_b: BuiltImage
    clash_a: BuiltImage  # example.com/clash:1 in a
    clash_b: BuiltImage  # example.com/clash:1 in b


def _two_layouts(oci_layout: Layouts) -> TwoLayouts:
    a = oci_layout("a")
    b = oci_layout("b")
    shared_a = a.image(name="shared", user="1002")
    shared_b = b.image(name="shared", user="1002")
    assert shared_a.id == shared_b.id
    assert shared_a.manifest.digest == shared_b.manifest.digest
    a.tag(shared_a, "example.com/shared:a")
    a.tag(shared_a, "example.com/from-a:1")
    b.tag(shared_b, "example.com/shared:b")
    b.tag(shared_b, "example.com/from-b:1")
    only_a = a.image(name="only-a")
    a.tag(only_a, "example.com/only-a:1")
    only_b = b.image(name="only-b")
    b.tag(only_b, "example.com/only-b:1")
    clash_a = a.image(name="clash-a")
    a.tag(clash_a, "example.com/clash:1")
    clash_b = b.image(name="clash-b")
    b.tag(clash_b, "example.com/clash:1")
    a.write()
    b.write()
    return TwoLayouts(a, b, shared_a, only_a, only_b, clash_a, clash_b)


SHARED_TAGS = [
    "example.com/from-a:1",
    "example.com/from-b:1",
    "example.com/shared:a",
    "example.com/shared:b",
]


def test_two_backends_list_merges_same_id(crishim_server: Server, oci_layout: Layouts) -> None:
    two = _two_layouts(oci_layout)
    shim = _serve(crishim_server, two.a, two.b)
    images = shim.list()
    ids = [image.id for image in images]
    assert len(ids) == len(set(ids)), "one entry per image ID"
    assert set(ids) == {two.shared.id, two.only_a.id, two.only_b.id, two.clash_a.id, two.clash_b.id}
    (shared,) = (image for image in images if image.id == two.shared.id)
    assert sorted(shared.repo_tags) == SHARED_TAGS
    digest = two.shared.manifest.digest
    assert sorted(shared.repo_digests) == sorted(
        f"example.com/{repo}@{digest}" for repo in ("shared", "from-a", "from-b")
    )
    assert shared.size == two.shared.size
    assert shared.uid.value == 1002


def test_two_backends_image_only_in_second(crishim_server: Server, oci_layout: Layouts) -> None:
    two = _two_layouts(oci_layout)
    shim = _serve(crishim_server, two.a, two.b)
    for ref in ("example.com/only-b:1", two.only_b.id, two.only_b.id[7:19]):
        response = shim.status(ref, verbose=True)
        assert response.image.id == two.only_b.id, ref
        assert list(response.image.repo_tags) == ["example.com/only-b:1"]
        info = json.loads(response.info["info"])
        assert info["backend"] == "b"
        assert info["source"] == str(two.b.root)
    assert [i.id for i in shim.list("example.com/only-b:1")] == [two.only_b.id]


def test_two_backends_status_returns_merged_names(
    crishim_server: Server, oci_layout: Layouts
) -> None:
    two = _two_layouts(oci_layout)
    shim = _serve(crishim_server, two.a, two.b)
    # tags only the first backend knows, then tags only the second one knows
    for ref in SHARED_TAGS:
        image = shim.status(ref).image
        assert image.id == two.shared.id, ref
        assert sorted(image.repo_tags) == SHARED_TAGS, ref
        assert len(image.repo_digests) == 3, ref


def test_two_backends_same_message_whichever_backend_knows_the_name(
    crishim_server: Server, oci_layout: Layouts
) -> None:
    """Rule 2 across backends: one image, one Image message, however it is asked for."""
    two = _two_layouts(oci_layout)
    shim = _serve(crishim_server, two.a, two.b)
    (listed,) = shim.list(two.shared.id)
    expected = image_bytes(listed)
    refs = [two.shared.id, *SHARED_TAGS, f"example.com/from-b@{two.shared.manifest.digest}"]
    for ref in refs:
        assert image_bytes(shim.status(ref).image) == expected, ref
    [in_full_list] = [i for i in shim.list() if i.id == two.shared.id]
    assert image_bytes(in_full_list) == expected


@pytest.mark.parametrize("order", ["ab", "ba"])
def test_two_backends_consulted_in_config_order(
    crishim_server: Server, oci_layout: Layouts, order: str
) -> None:
    two = _two_layouts(oci_layout)
    layouts = {"a": two.a, "b": two.b}
    first = {"a": two.clash_a, "b": two.clash_b}[order[0]]
    config = make_config(*(backend(name, layouts[name].root) for name in order))
    shim = crishim_server(config)
    response = shim.status("example.com/clash:1", verbose=True)
    assert response.image.id == first.id
    assert json.loads(response.info["info"])["backend"] == order[0]


def test_two_backends_of_one_layout_each_named(crishim_server: Server, oci_layout: Layouts) -> None:
    """Two instances of the type may even share a layout; each applies its own options."""
    b = oci_layout()
    img = b.image(name="tagged")
    b.tag(img, "v1")
    b.write()
    config = make_config(
        backend("one", b.root, repository="example.com/one"),
        backend("two", b.root, repository="example.com/two"),
    )
    shim = crishim_server(config)
    (image,) = shim.list()
    assert sorted(image.repo_tags) == ["example.com/one:v1", "example.com/two:v1"]
    assert shim.status("example.com/two:v1").image.id == img.id
