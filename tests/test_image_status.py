"""ImageStatus end to end: absence, resolution, bad input, fields, verbose info.

All calls go over the real unix socket with the generated stubs, against a
server over the standard layout of ``conftest.build_standard_layout``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import (
    ABSENT_ID,
    APP_ANNOTATIONS,
    STANDARD_TAGS,
    StandardImages,
    hexid,
    image_bytes,
    make_config,
    rpc_error,
    standard_digests,
)
from grpc_health.v1 import health_pb2

from crishim import hookimpl, reference
from crishim.catalog import BackendHandle, Catalog
from crishim.cri.runtime.v1 import api_pb2
from crishim.errors import AmbiguousReference
from crishim.index import ImageIndex
from crishim.model import ImageRecord, Platform
from crishim.reference import MIN_ID_PREFIX
from crishim.testing.server import RunningShim, running_server
from crishim.types import BackendContext, BackendOptions, BackendType, IndexedBackend

Ref = Callable[[StandardImages], str]


def _digest(key: str) -> Callable[[StandardImages], str]:
    """The digest a standard image's names were published with."""

    def get(std: StandardImages) -> str:
        return std.multi.descriptor.digest if key == "multi" else std.singles[key].manifest.digest

    return get


# --------------------------------------------------------------------------- rule 1: absent

ABSENT: list[Any] = [
    pytest.param(lambda s: "example.com/nothing:1", id="unknown-name"),
    pytest.param(lambda s: "busybox:nope", id="unknown-tag-of-known-repo"),
    pytest.param(lambda s: "user/other", id="unknown-user-repo"),
    pytest.param(lambda s: "app:v1", id="tag-of-other-registry-without-host"),
    pytest.param(lambda s: "localhost:5000/app", id="registry-repo-without-latest"),
    pytest.param(lambda s: "localhost:5001/app:v1", id="other-port"),
    pytest.param(lambda s: ABSENT_ID, id="absent-full-id"),
    pytest.param(lambda s: "f" * 64, id="absent-bare-hex-id"),
    pytest.param(lambda s: "0" * MIN_ID_PREFIX, id="absent-id-prefix"),
    pytest.param(lambda s: "sha256:" + "0" * 20, id="absent-sha256-id-prefix"),
    pytest.param(lambda s: "busybox@" + ABSENT_ID, id="absent-digest"),
    pytest.param(lambda s: "user/app@" + s.busybox.manifest.digest, id="digest-of-other-repo"),
    pytest.param(lambda s: "busybox@" + s.busybox.id, id="config-digest-is-not-a-name-digest"),
    pytest.param(
        lambda s: hexid(s.busybox.id)[: MIN_ID_PREFIX - 1], id="too-short-prefix-is-a-name"
    ),
    pytest.param(
        lambda s: "sha256:" + hexid(s.busybox.id)[: MIN_ID_PREFIX - 1],
        id="too-short-sha256-prefix-is-a-name",
    ),
    pytest.param(lambda s: s.multi_amd64.id, id="other-platform-of-an-index"),
    pytest.param(lambda s: s.multi_arm.id, id="arm-v7-of-an-index"),
]


@pytest.mark.parametrize("ref", ABSENT)
@pytest.mark.parametrize("verbose", [False, True], ids=["plain", "verbose"])
def test_absent_image_is_ok_without_image(
    std_shim: RunningShim, std: StandardImages, ref: Ref, verbose: bool
) -> None:
    response = std_shim.status(ref(std), verbose=verbose)
    assert not response.HasField("image")
    assert response.image.id == ""


def test_absent_is_not_found_in_list_either(std_shim: RunningShim, std: StandardImages) -> None:
    for param in ABSENT:
        (ref,) = param.values
        assert std_shim.list(ref(std)) == [], param.id


# --------------------------------------------------------------------------- rule 2: resolution

PRESENT: list[Any] = [
    # busybox: every Docker spelling of the official image
    pytest.param("busybox", lambda s: "busybox", id="short-name"),
    pytest.param("busybox", lambda s: "busybox:latest", id="short-name-latest"),
    pytest.param("busybox", lambda s: "library/busybox", id="library-path"),
    pytest.param("busybox", lambda s: "library/busybox:latest", id="library-path-latest"),
    pytest.param("busybox", lambda s: "docker.io/library/busybox", id="docker-io-no-tag"),
    pytest.param("busybox", lambda s: "docker.io/library/busybox:latest", id="fully-qualified"),
    pytest.param("busybox", lambda s: "index.docker.io/library/busybox", id="legacy-domain"),
    pytest.param("busybox", lambda s: "busybox:1.36", id="second-tag"),
    pytest.param("busybox", lambda s: "docker.io/busybox:1.36", id="docker-io-without-library"),
    pytest.param("busybox", lambda s: "busybox@" + _digest("busybox")(s), id="digest"),
    pytest.param(
        "busybox",
        lambda s: "docker.io/library/busybox@" + _digest("busybox")(s),
        id="qualified-digest",
    ),
    pytest.param("busybox", lambda s: "busybox:1.36@" + _digest("busybox")(s), id="tag-and-digest"),
    pytest.param(
        "busybox",
        lambda s: "busybox:no-such-tag@" + _digest("busybox")(s),
        id="wrong-tag-right-digest",
    ),
    pytest.param("busybox", lambda s: s.busybox.id, id="full-id"),
    pytest.param("busybox", lambda s: hexid(s.busybox.id), id="bare-hex-id"),
    pytest.param("busybox", lambda s: hexid(s.busybox.id)[:MIN_ID_PREFIX], id="min-prefix"),
    pytest.param(
        "busybox",
        lambda s: "sha256:" + hexid(s.busybox.id)[:MIN_ID_PREFIX],
        id="sha256-min-prefix",
    ),
    pytest.param("busybox", lambda s: hexid(s.busybox.id)[:40], id="40-char-prefix"),
    pytest.param("busybox", lambda s: hexid(s.busybox.id)[:63], id="63-char-prefix"),
    # a user repository on Docker Hub
    pytest.param("app", lambda s: "user/app", id="user-repo"),
    pytest.param("app", lambda s: "user/app:latest", id="user-repo-latest"),
    pytest.param("app", lambda s: "docker.io/user/app:latest", id="user-repo-qualified"),
    pytest.param("app", lambda s: "user/app@" + _digest("app")(s), id="user-repo-digest"),
    pytest.param("app", lambda s: hexid(s.app.id)[:MIN_ID_PREFIX], id="user-repo-prefix"),
    # a registry host with a port
    pytest.param("registry", lambda s: "localhost:5000/app:v1", id="host-port"),
    pytest.param(
        "registry", lambda s: "localhost:5000/app@" + _digest("registry")(s), id="host-port-digest"
    ),
    pytest.param(
        "registry",
        lambda s: "localhost:5000/app:v9@" + _digest("registry")(s),
        id="host-port-wrong-tag-right-digest",
    ),
    pytest.param("registry", lambda s: s.registry.id, id="host-port-id"),
    # other registries
    pytest.param("web", lambda s: "example.com/web:1", id="example-com"),
    pytest.param("web_group", lambda s: "example.com/web-group:1", id="dash-in-repo"),
    # an entry without a name: by ID only
    pytest.param("nameless", lambda s: s.nameless.id, id="nameless-by-id"),
    pytest.param(
        "nameless", lambda s: hexid(s.nameless.id)[:MIN_ID_PREFIX], id="nameless-by-prefix"
    ),
    # a multi-platform image: by its names (index digest) and its arm64 ID
    pytest.param("multi", lambda s: "example.com/multi:1", id="index-tag"),
    pytest.param("multi", lambda s: "example.com/multi@" + _digest("multi")(s), id="index-digest"),
    pytest.param(
        "multi",
        lambda s: "example.com/multi:x@" + _digest("multi")(s),
        id="index-wrong-tag-right-digest",
    ),
    pytest.param("multi", lambda s: s.multi_arm64.id, id="index-platform-id"),
]


@pytest.mark.parametrize(("key", "ref"), PRESENT)
def test_resolves(std_shim: RunningShim, std: StandardImages, key: str, ref: Ref) -> None:
    response = std_shim.status(ref(std))
    assert response.HasField("image")
    assert response.image.id == std.served()[key].id


@pytest.mark.parametrize("key", list(STANDARD_TAGS))
def test_same_message_by_id_tags_and_digests(
    std_shim: RunningShim, std: StandardImages, key: str
) -> None:
    image_id = std.served()[key].id
    refs = [image_id, hexid(image_id), hexid(image_id)[:MIN_ID_PREFIX]]
    refs += STANDARD_TAGS[key]
    refs += standard_digests(std)[key]
    refs += [ref(std) for k, ref in (p.values for p in PRESENT) if k == key]
    by_id = std_shim.status(image_id).image
    assert by_id.id == image_id
    for ref_text in refs:
        image = std_shim.status(ref_text).image
        assert image_bytes(image) == image_bytes(by_id), ref_text
    # ListImages describes the image with the very same message
    (listed,) = std_shim.list(image_id)
    assert image_bytes(listed) == image_bytes(by_id)
    [in_full_list] = [i for i in std_shim.list() if i.id == image_id]
    assert image_bytes(in_full_list) == image_bytes(by_id)


def test_hex_name_is_looked_up_as_a_name_first(crishim_server: Any, oci_layout: Any) -> None:
    """Lowercase hex of 12+ chars is a valid name too; like containerd, the name wins."""
    b = oci_layout()
    named = b.image(name="hex-named")
    other = b.image(name="other")
    # name the image after the ID prefix of ANOTHER image
    prefix = hexid(other.id)[:MIN_ID_PREFIX]
    b.tag(named, prefix)
    b.tag(other, "example.com/other:1")
    root = b.write()
    shim = crishim_server(
        make_config({"name": "a", "type": "oci-dir", "options": {"path": str(root)}})
    )
    assert shim.status(prefix).image.id == named.id
    assert shim.status(f"docker.io/library/{prefix}:latest").image.id == named.id
    # with sha256: in front it can only be an ID prefix
    assert shim.status("sha256:" + prefix).image.id == other.id
    assert list(shim.status(named.id).image.repo_tags) == [f"docker.io/library/{prefix}:latest"]


# --------------------------------------------------------------------------- ambiguity
#
# Two oci-dir images whose config digests share a 12-hex-char prefix would need
# about 2**24 images (a birthday search over 48 bits): infeasible in a test.
# Ambiguity is therefore tested with hand-made ImageRecords whose IDs we choose:
# end to end through a tiny test backend type registered as an extra plugin,
# and directly through ImageIndex.match_id_prefix and Catalog.

SHARED = "abcdef012345"
AMBIGUOUS_IDS = ["sha256:" + SHARED + "0" * 52, "sha256:" + SHARED + "1" * 52]


class RecordsOptions(BackendOptions):
    ids: list[str]


class RecordsBackend(IndexedBackend):
    """Serves one ImageRecord per configured ID, tagged example.com/rec:<first 16 hex>."""

    def __init__(self, context: BackendContext, options: RecordsOptions) -> None:
        super().__init__(context)
        self.ids = list(options.ids)

    def start(self) -> None:
        self.publish(_record(i) for i in self.ids)


class RecordsPlugin:
    @hookimpl
    def crishim_backend_types(self) -> list[BackendType]:
        return [
            BackendType(name="test-records", factory=RecordsBackend, options_model=RecordsOptions)
        ]


def _record(image_id: str) -> ImageRecord:
    return ImageRecord(id=image_id, repo_tags=(f"example.com/rec:{hexid(image_id)[:16]}",), size=1)


def _records_server(*id_lists: list[str]) -> Any:
    backends = [
        {"name": f"r{i}", "type": "test-records", "options": {"ids": ids}}
        for i, ids in enumerate(id_lists)
    ]
    return running_server(make_config(*backends), extra_plugins=[("test-records", RecordsPlugin())])


@pytest.fixture(scope="module")
def ambiguous_shim() -> Iterator[RunningShim]:
    with _records_server(AMBIGUOUS_IDS) as shim:
        yield shim


@pytest.mark.parametrize(
    "ref",
    [SHARED, "sha256:" + SHARED],
    ids=["bare-prefix", "sha256-prefix"],
)
def test_ambiguous_prefix_is_invalid_argument(ambiguous_shim: RunningShim, ref: str) -> None:
    err = rpc_error(ambiguous_shim.status, ref)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ambiguous" in err.details()
    assert SHARED in err.details()


@pytest.mark.parametrize(("suffix", "index"), [("0", 0), ("1", 1)], ids=["first", "second"])
def test_longer_prefix_disambiguates(ambiguous_shim: RunningShim, suffix: str, index: int) -> None:
    assert ambiguous_shim.status(SHARED + suffix).image.id == AMBIGUOUS_IDS[index]
    assert ambiguous_shim.status(AMBIGUOUS_IDS[index]).image.id == AMBIGUOUS_IDS[index]


def test_ambiguous_prefix_across_two_backends() -> None:
    with _records_server([AMBIGUOUS_IDS[0]], [AMBIGUOUS_IDS[1]]) as shim:
        err = rpc_error(shim.status, SHARED)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "ambiguous" in err.details()
        assert shim.status(SHARED + "1").image.id == AMBIGUOUS_IDS[1]


def test_same_id_in_two_backends_is_not_ambiguous() -> None:
    with _records_server([AMBIGUOUS_IDS[0]], [AMBIGUOUS_IDS[0]]) as shim:
        assert shim.status(SHARED).image.id == AMBIGUOUS_IDS[0]


def test_ambiguity_in_index_and_catalog_directly() -> None:
    index = ImageIndex(_record(i) for i in AMBIGUOUS_IDS)
    assert sorted(index.match_id_prefix(SHARED)) == sorted(AMBIGUOUS_IDS)
    assert index.match_id_prefix(SHARED + "1") == [AMBIGUOUS_IDS[1]]
    assert index.match_id_prefix("abcdef01234f") == []

    context = BackendContext(
        name="r", platform=Platform("linux", "arm64", "v8"), config_dir=Path("/")
    )
    backend = RecordsBackend(context, RecordsOptions(ids=AMBIGUOUS_IDS))
    backend.start()
    catalog = Catalog([BackendHandle("r", "test-records", backend)])
    with pytest.raises(AmbiguousReference, match="ambiguous"):
        catalog.image_status(reference.parse(SHARED))
    answer = catalog.image_status(reference.parse(SHARED + "0"))
    assert answer is not None
    assert answer.record.id == AMBIGUOUS_IDS[0]


# --------------------------------------------------------------------------- rule 3: bad input

BAD: list[Any] = [
    pytest.param("", "empty", id="empty"),
    pytest.param("Busybox", "lowercase", id="uppercase-repository"),
    pytest.param("library/BusyBox:1", "lowercase", id="uppercase-path"),
    pytest.param("busybox@sha256:abc", "digest", id="short-digest"),
    pytest.param("busybox@sha256:" + "A" * 64, "digest", id="uppercase-digest"),
    pytest.param("busybox@md5:" + "a" * 32, "digest", id="unsupported-digest-algorithm"),
    pytest.param("sha256:" + "G" * 64, "digest", id="malformed-full-id"),
    pytest.param("busybox:", "tag", id="empty-tag"),
    pytest.param("busybox:" + "t" * 129, "tag", id="tag-too-long"),
    pytest.param("a" * 5000, "limit", id="5000-chars"),
    pytest.param("example.com/" + "a" * 300, "255", id="repository-name-too-long"),
    pytest.param("busy\x01box", "control character", id="control-char-soh"),
    pytest.param("busybox\x00", "control character", id="control-char-nul"),
    pytest.param("\x1b[31mbusybox", "control character", id="escape-sequence"),
    pytest.param("busy\tbox", "control character", id="tab"),
    pytest.param("busybox\n", "whitespace", id="trailing-newline"),
    pytest.param(" busybox", "whitespace", id="leading-space"),
    pytest.param("büsybox", "invalid character", id="non-ascii"),
    pytest.param("busy box", "invalid character", id="inner-space"),
    pytest.param(":latest", "repository name", id="missing-repository"),
]


def _assert_still_serving(shim: RunningShim, std: StandardImages) -> None:
    for service in ("", "runtime.v1.ImageService"):
        health = shim.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert shim.status("busybox").image.id == std.busybox.id


@pytest.mark.parametrize(("ref", "problem"), BAD)
def test_bad_reference_is_invalid_argument(
    std_shim: RunningShim, std: StandardImages, ref: str, problem: str
) -> None:
    err = rpc_error(std_shim.status, ref)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert problem.lower() in err.details().lower()
    _assert_still_serving(std_shim, std)


def test_bad_reference_message_is_bounded(std_shim: RunningShim) -> None:
    """The 5000-char input is refused with a short message, not echoed back whole."""
    err = rpc_error(std_shim.status, "a" * 5000)
    assert "5000" in err.details()
    assert len(err.details()) < 500


def test_server_survives_a_burst_of_bad_input(std_shim: RunningShim, std: StandardImages) -> None:
    for _ in range(3):
        for param in BAD:
            ref, _problem = param.values
            assert rpc_error(std_shim.status, ref).code() == grpc.StatusCode.INVALID_ARGUMENT
    _assert_still_serving(std_shim, std)
    assert std_shim.status(std.app.id).image.id == std.app.id


def test_missing_image_spec_is_invalid_argument(std_shim: RunningShim) -> None:
    """A request with no ``image`` at all is the empty reference."""
    err = rpc_error(std_shim.images.ImageStatus, api_pb2.ImageStatusRequest(), timeout=10)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "empty" in err.details()


# --------------------------------------------------------------------------- rule 4: fields


@pytest.mark.parametrize("key", list(STANDARD_TAGS))
def test_id_tags_digests_size(std_shim: RunningShim, std: StandardImages, key: str) -> None:
    built = std.served()[key]
    image = std_shim.status(built.id).image
    assert image.id == built.id
    assert sorted(image.repo_tags) == sorted(STANDARD_TAGS[key])
    assert sorted(image.repo_digests) == sorted(standard_digests(std)[key])
    assert image.size == built.size
    assert image.size > 0
    assert image.spec.image == built.id


def test_multi_platform_digest_is_the_index_digest(
    std_shim: RunningShim, std: StandardImages
) -> None:
    image = std_shim.status("example.com/multi:1").image
    assert list(image.repo_digests) == [f"example.com/multi@{std.multi.descriptor.digest}"]
    assert std.multi_arm64.manifest.digest not in image.repo_digests[0]
    assert image.size == std.multi_arm64.size
    assert image.size != std.multi_amd64.size


@pytest.mark.parametrize(
    ("key", "uid", "username"),
    [
        ("app", 1002, ""),
        ("registry", 1003, ""),
        ("web", None, "www-data"),
        ("web_group", None, "www-data"),
        ("busybox", None, ""),
        ("nameless", None, ""),
    ],
    ids=["uid", "uid-gid", "username", "username-gid", "empty-user", "empty-user-nameless"],
)
def test_user(
    std_shim: RunningShim, std: StandardImages, key: str, uid: int | None, username: str
) -> None:
    image = std_shim.status(std.served()[key].id).image
    if uid is None:
        assert not image.HasField("uid")
    else:
        assert image.HasField("uid")
        assert image.uid.value == uid
    assert image.username == username


@pytest.mark.parametrize(
    ("key", "annotations"),
    [("app", APP_ANNOTATIONS), ("busybox", {}), ("multi", {})],
    ids=["with-annotations", "without", "index"],
)
def test_spec(
    std_shim: RunningShim, std: StandardImages, key: str, annotations: dict[str, str]
) -> None:
    built = std.served()[key]
    image = std_shim.status(built.id).image
    assert image.spec.image == built.id
    assert dict(image.spec.annotations) == annotations
    assert dict(image.spec.annotations) == built.manifest_json.get("annotations", {})


@pytest.mark.parametrize(
    ("key", "pinned"),
    [
        ("app", True),  # exact name, configured as "user/app"
        ("registry", True),  # prefix pattern "localhost:5000/*"
        ("busybox", False),  # "busybox:9.9" names a tag busybox does not have
        ("web", False),
        ("nameless", False),
        ("multi", False),
    ],
    ids=["exact-name", "prefix-pattern", "other-tag-same-repo", "unpinned", "nameless", "index"],
)
def test_pinned(std_shim: RunningShim, std: StandardImages, key: str, pinned: bool) -> None:
    built = std.served()[key]
    assert std_shim.status(built.id).image.pinned is pinned
    (listed,) = std_shim.list(built.id)
    assert listed.pinned is pinned


def test_pinned_by_digest_and_exact_qualified_name(
    crishim_server: Any, std: StandardImages
) -> None:
    config = make_config(
        {"name": "std", "type": "oci-dir", "options": {"path": str(std.path)}},
        pinned=[
            f"example.com/web@{std.web.manifest.digest}",
            "docker.io/library/busybox:1.36",
            "example.com/multi:*",
        ],
    )
    shim = crishim_server(config)
    pinned = {i.id for i in shim.list() if i.pinned}
    assert pinned == {std.web.id, std.busybox.id, std.multi_arm64.id}


# --------------------------------------------------------------------------- rule 5: verbose


@pytest.mark.parametrize("key", list(STANDARD_TAGS))
def test_verbose_info(std_shim: RunningShim, std: StandardImages, key: str) -> None:
    built = std.served()[key]
    response = std_shim.status(built.id, verbose=True)
    assert response.image.id == built.id
    assert set(response.info) >= {"info"}
    info = json.loads(response.info["info"])
    assert isinstance(info, dict)
    assert info["imageSpec"] == built.config_json
    assert info["chainID"] == built.chain_id
    assert info["backend"] == "std"
    assert info["source"] == str(std.path)


def test_verbose_does_not_change_the_image(std_shim: RunningShim, std: StandardImages) -> None:
    plain = std_shim.status("user/app")
    verbose = std_shim.status("user/app", verbose=True)
    assert image_bytes(plain.image) == image_bytes(verbose.image)


@pytest.mark.parametrize("key", ["busybox", "multi", "nameless"])
def test_not_verbose_has_no_info(std_shim: RunningShim, std: StandardImages, key: str) -> None:
    response = std_shim.status(std.served()[key].id, verbose=False)
    assert response.HasField("image")
    assert len(response.info) == 0
