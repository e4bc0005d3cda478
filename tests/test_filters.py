"""Filters: the embedded-filter, the default chain, order, caching and config.

The seed's second rule: embedded images do not comply with the OCI image
specification and cannot be queried by ImageStatus. Backends carry them to
the filters as records (an OCI layout naming an embedded manifest, an
iSulad image on disk); the catalog hides what a filter vetoes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import backend, make_config
from crishim_plugins.embedded_filter import EmbeddedFilter, EmbeddedFilterOptions

from crishim import hookimpl, reference
from crishim.catalog import BackendHandle, Catalog, FilterChain, FilterHandle
from crishim.config import ConfigError, parse_settings
from crishim.container import build_filters, make_application
from crishim.cri.runtime.v1 import api_pb2
from crishim.errors import NotSupported
from crishim.index import ImageIndex
from crishim.manager import DISABLE_ENV, load_plugins
from crishim.model import ImageRecord, Platform
from crishim.oci.layout import EMBEDDED_MANIFEST
from crishim.testing.embedded import add_embedded_image
from crishim.testing.ocibuild import (
    DOCKER_CONFIG,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_MANIFEST,
    REF_NAME,
    LayoutBuilder,
    canonical_json,
    write_json_blob,
)
from crishim.testing.server import RunningShim, running_server
from crishim.types import (
    VISIBLE,
    BackendContext,
    BackendOptions,
    BackendType,
    FilterContext,
    FilterType,
    IndexedBackend,
    PullRequest,
    Verdict,
)

Server = Callable[..., RunningShim]
Layouts = Callable[..., LayoutBuilder]

EMBEDDED = "example.com/embedded/app:1.0"
FIXTURES = Path(__file__).parent / "fixtures" / "isulad-embedded"
STRICT = [{"name": "oci-only", "type": "embedded-filter"}]


def _layout_with_embedded(b: LayoutBuilder, *, tag: str | None = None) -> tuple[str, str]:
    """An OCI image ``example.com/ok:1`` and an embedded one; (ok ID, embedded ID)."""
    ok = b.image(name="ok", user="1000")
    b.tag(ok, "example.com/ok:1")
    embedded = add_embedded_image(b, EMBEDDED, tag=tag)
    b.write()
    return ok.id, embedded.digest


def _serve(server: Server, b: LayoutBuilder, **config: Any) -> RunningShim:
    return server({**make_config(backend("a", b.root)), **config})


# --------------------------------------------------------------------------- the OCI layout


def test_embedded_image_in_an_oci_layout_is_never_answered(
    crishim_server: Server, oci_layout: Layouts, caplog: pytest.LogCaptureFixture
) -> None:
    b = oci_layout()
    ok_id, embedded_id = _layout_with_embedded(b)
    shim = _serve(crishim_server, b)
    with caplog.at_level(logging.DEBUG, logger="crishim.catalog"):
        for ref in (EMBEDDED, embedded_id, embedded_id.removeprefix("sha256:")[:12]):
            response = shim.status(ref)
            assert not response.HasField("image"), ref
            assert response.ByteSize() == 0
    # verbose logging says why, naming the filter
    reasons = [r.getMessage() for r in caplog.records if "hidden by filter" in r.getMessage()]
    assert any("embedded-filter" in m and EMBEDDED_MANIFEST in m for m in reasons), reasons
    assert [i.id for i in shim.list()] == [ok_id]
    streamed = shim.images.StreamImages(api_pb2.StreamImagesRequest(), timeout=30)
    assert [i.id for r in streamed for i in r.images] == [ok_id]
    assert shim.list(EMBEDDED) == []
    assert shim.status("example.com/ok:1").image.id == ok_id


def test_removing_an_embedded_image_is_ok_and_removes_nothing(
    crishim_server: Server, oci_layout: Layouts
) -> None:
    b = oci_layout()
    _, embedded_id = _layout_with_embedded(b)
    before = (b.root / "index.json").read_bytes()
    shim = _serve(crishim_server, b)
    shim.remove(EMBEDDED)
    shim.remove(embedded_id)
    assert (b.root / "index.json").read_bytes() == before
    assert b.blob_path(embedded_id).exists()
    # the backend still holds it: with no filters, it is there
    handle = shim.catalog.backends[0]
    assert handle.backend.get_image(reference.parse(EMBEDDED)) is not None


def test_list_hidden_lists_embedded_images_but_status_and_remove_ignore_them(
    crishim_server: Server, oci_layout: Layouts
) -> None:
    b = oci_layout()
    ok_id, embedded_id = _layout_with_embedded(b)
    filters = [{"name": "isulad", "type": "embedded-filter", "options": {"list_hidden": True}}]
    shim = _serve(crishim_server, b, filters=filters)
    listed = {i.id: list(i.repo_tags) for i in shim.list()}
    assert listed == {ok_id: ["example.com/ok:1"], embedded_id: [EMBEDDED]}
    assert not shim.status(EMBEDDED).HasField("image")
    shim.remove(EMBEDDED)
    assert embedded_id in {i.id for i in shim.list()}


def test_embedded_manifest_without_annotation_is_named_by_its_image_name(
    crishim_server: Server, oci_layout: Layouts
) -> None:
    b = oci_layout()
    _, embedded_id = _layout_with_embedded(b, tag="")
    filters = [{"name": "isulad", "type": "embedded-filter", "options": {"list_hidden": True}}]
    shim = _serve(crishim_server, b, filters=filters)
    assert {i.id: list(i.repo_tags) for i in shim.list()}[embedded_id] == [EMBEDDED]


def test_with_no_filters_an_embedded_image_is_served_without_config(
    crishim_server: Server, oci_layout: Layouts
) -> None:
    """``filters: []`` turns the seed's rule off (documented in docs/plugins.md)."""
    b = oci_layout()
    _, embedded_id = _layout_with_embedded(b)
    shim = _serve(crishim_server, b, filters=[])
    assert shim.catalog.filters is None
    image = shim.status(EMBEDDED).image
    assert image.id == embedded_id
    assert not image.HasField("uid")
    assert image.username == ""
    info = json.loads(shim.status(EMBEDDED, verbose=True).info["info"])
    assert info["manifestMediaType"] == EMBEDDED_MANIFEST
    assert info["imageSpec"] == {}


def test_embedded_image_hidden_after_a_restart_from_the_snapshot(
    crishim_server: Server, oci_layout: Layouts, tmp_path: Path
) -> None:
    b = oci_layout()
    ok_id, _ = _layout_with_embedded(b)
    config = {**make_config(backend("a", b.root)), "state_dir": str(tmp_path / "state")}
    with running_server(config) as first:
        assert [i.id for i in first.list()] == [ok_id]
    with running_server(config) as second:
        assert [i.id for i in second.list()] == [ok_id]
        assert not second.status(EMBEDDED).HasField("image")


def test_removing_an_oci_image_keeps_the_embedded_entry(
    crishim_server: Server, oci_layout: Layouts
) -> None:
    b = oci_layout()
    _, embedded_id = _layout_with_embedded(b)
    shim = _serve(crishim_server, b)
    shim.remove("example.com/ok:1")
    entries = json.loads((b.root / "index.json").read_bytes())["manifests"]
    assert [e["digest"] for e in entries] == [embedded_id]
    assert b.blob_path(embedded_id).exists()


def test_a_hidden_image_leaves_the_name_to_the_next_backend(
    crishim_server: Server, oci_layout: Layouts
) -> None:
    first = oci_layout("first")
    add_embedded_image(first, EMBEDDED)
    first.write()
    second = oci_layout("second")
    real = second.image(name="real")
    second.tag(real, EMBEDDED)
    second.write()
    shim = crishim_server(make_config(backend("a", first.root), backend("b", second.root)))
    assert shim.status(EMBEDDED).image.id == real.id
    assert [i.id for i in shim.list()] == [real.id]


def test_docker_schema1_manifest_is_carried_and_hidden(
    crishim_server: Server, oci_layout: Layouts
) -> None:
    b = oci_layout()
    layer, _ = b.layer({"x": "1"})
    schema1 = {
        "schemaVersion": 1,
        "name": "example.com/old",
        "tag": "1",
        "architecture": "amd64",
        "fsLayers": [{"blobSum": layer.digest}],
        "history": [{"v1Compatibility": "{}"}],
    }
    media_type = "application/vnd.docker.distribution.manifest.v1+json"
    manifest = b.blob(canonical_json(schema1), media_type)
    b.add_raw_entry({**manifest.to_json(), "annotations": {REF_NAME: "example.com/old:1"}})
    b.write()
    filters = [{"name": "isulad", "type": "embedded-filter", "options": {"list_hidden": True}}]
    shim = _serve(crishim_server, b, filters=filters)
    assert not shim.status("example.com/old:1").HasField("image")
    assert [i.id for i in shim.list()] == [manifest.digest]


# --------------------------------------------------------------------------- non-compliant configs


def _config(**changes: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "architecture": "arm64",
        "os": "linux",
        "config": {"User": "1000"},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "a" * 64]},
    }
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    return config


NONCOMPLIANT: list[Any] = [
    pytest.param(_config(rootfs=None), "no rootfs", id="no-rootfs"),
    pytest.param(_config(rootfs={"type": "tar", "diff_ids": []}), "rootfs.type", id="type"),
    pytest.param(_config(rootfs={"type": "layers"}), "diff_ids", id="no-diff-ids"),
    pytest.param(_config(rootfs={"type": "layers", "diff_ids": ["x"]}), "diff_ids", id="bad-id"),
    pytest.param(_config(os=None), "no os", id="no-os"),
    pytest.param(_config(os=""), "no os", id="empty-os"),
    pytest.param(_config(architecture=None), "no architecture", id="no-architecture"),
]


def _raw_image(b: LayoutBuilder, config: dict[str, Any], name: str, docker: bool = False) -> str:
    config_desc = write_json_blob(b, config, DOCKER_CONFIG if docker else OCI_CONFIG)
    manifest_type = DOCKER_MANIFEST if docker else OCI_MANIFEST
    manifest = write_json_blob(
        b,
        {"schemaVersion": 2, "mediaType": manifest_type, "config": config_desc.to_json()}
        | {"layers": []},
        manifest_type,
    )
    b.add_raw_entry({**manifest.to_json(), "annotations": {REF_NAME: name}})
    return config_desc.digest


@pytest.mark.parametrize(("config", "reason"), NONCOMPLIANT)
def test_oci_image_lacking_required_config_fields_is_hidden(
    crishim_server: Server,
    oci_layout: Layouts,
    caplog: pytest.LogCaptureFixture,
    config: dict[str, Any],
    reason: str,
) -> None:
    b = oci_layout()
    bad_id = _raw_image(b, config, "example.com/bad:1")
    good_id = _raw_image(b, _config(), "example.com/good:1", docker=True)
    b.write()
    shim = _serve(crishim_server, b)
    with caplog.at_level(logging.DEBUG, logger="crishim.catalog"):
        assert not shim.status("example.com/bad:1").HasField("image")
        assert not shim.status(bad_id).HasField("image")
    assert any(reason in r.getMessage() for r in caplog.records), reason
    assert shim.status("example.com/good:1").image.id == good_id
    assert [i.id for i in shim.list()] == [good_id]


# --------------------------------------------------------------------------- iSulad on disk


class IsuladDirOptions(BackendOptions):
    path: str


class IsuladDirBackend(IndexedBackend):
    """Reads iSulad embedded images (``<path>/*/manifest``) as a backend would."""

    def __init__(self, context: BackendContext, options: IsuladDirOptions) -> None:
        super().__init__(context)
        self.root = context.resolve_path(options.path)

    def start(self) -> None:
        records = []
        for manifest in sorted(self.root.glob("*/manifest")):
            data = manifest.read_bytes()
            parsed = json.loads(data)
            name = reference.parse(parsed["image_name"])
            records.append(
                ImageRecord(
                    id="sha256:" + hashlib.sha256(data).hexdigest(),
                    repo_tags=(name.tagged(),),
                    size=sum(layer.get("size", 0) for layer in parsed["layers"]),
                    source=str(manifest.parent),
                    manifest_media_type=parsed["mediaType"],
                )
            )
        self.publish(records)


class IsuladDirPlugin:
    @hookimpl
    def crishim_backend_types(self) -> list[BackendType]:
        return [BackendType("isulad-dir", IsuladDirBackend, IsuladDirOptions)]


def test_isulad_image_on_disk_is_carried_to_the_filter_and_hidden(tmp_path: Path) -> None:
    root = tmp_path / "images"
    shutil.copytree(FIXTURES, root)
    manifest = json.loads((root / "app" / "manifest").read_bytes())
    assert manifest["schemaVersion"] == 1
    assert manifest["mediaType"] == EMBEDDED_MANIFEST
    assert {"image_name", "created", "layers", "config"} <= set(manifest)
    config = make_config({"name": "isulad", "type": "isulad-dir", "options": {"path": str(root)}})
    plugins = [("isulad-dir", IsuladDirPlugin())]
    with running_server(config, extra_plugins=plugins) as shim:
        assert not shim.status(manifest["image_name"]).HasField("image")
        assert shim.list() == []
        shim.remove(manifest["image_name"])
    listing = {**config, "filters": [{**STRICT[0], "options": {"list_hidden": True}}]}
    with running_server(listing, extra_plugins=plugins) as shim:
        assert [list(i.repo_tags) for i in shim.list()] == [[manifest["image_name"]]]
        assert not shim.status(manifest["image_name"]).HasField("image")


def test_oci_dir_pointed_at_an_isulad_image_serves_nothing_and_keeps_running(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "app"
    shutil.copytree(FIXTURES / "app", root)
    with caplog.at_level(logging.ERROR), running_server(make_config(backend("a", root))) as shim:
        assert shim.list() == []
        assert not shim.status("example.com/embedded/app:1.0").HasField("image")
    assert any("not an OCI image layout" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- the catalog


class Counting:
    """A filter that hides names in ``hide`` and counts its checks."""

    def __init__(self, hide: Iterable[str] = (), reason: str = "no") -> None:
        self.hide = set(hide)
        self.reason = reason
        self.checks = 0

    def check(self, record: ImageRecord) -> Verdict:
        self.checks += 1
        if self.hide & set(record.repo_tags):
            return Verdict(hidden=True, reason=self.reason)
        return VISIBLE


def _record(tag: str, n: int) -> ImageRecord:
    return ImageRecord(id="sha256:" + f"{n:064x}", repo_tags=(f"example.com/{tag}:1",))


class Records(IndexedBackend):
    def __init__(self, records: Iterable[ImageRecord]) -> None:
        super().__init__(BackendContext("r", Platform("linux", "arm64"), Path("/")))
        self.publish(records)


def _catalog(*filters: tuple[str, Any], records: Iterable[ImageRecord] = ()) -> Catalog:
    backend_ = Records(records or [_record("a", 1), _record("b", 2)])
    handles = [FilterHandle(name, "test", f) for name, f in filters]
    return Catalog([BackendHandle("r", "records", backend_)], filters=handles)


def test_filters_run_in_the_configured_order() -> None:
    first, second = Counting({"example.com/a:1"}, "first"), Counting({"example.com/a:1"}, "2nd")
    ref = reference.parse("example.com/a:1")
    catalog = _catalog(("one", first), ("two", second))
    assert catalog.image_status(ref) is None
    assert catalog.filters is not None
    record = catalog.backends[0].backend.get_image(ref)
    assert record is not None
    verdict = catalog.filters.verdict(record)
    assert (verdict.filter, verdict.reason) == ("one", "first")
    assert second.checks == 0
    swapped = _catalog(("two", Counting({"example.com/a:1"}, "2nd")), ("one", first))
    record = swapped.backends[0].backend.get_image(ref)
    assert record is not None and swapped.filters is not None
    assert swapped.filters.verdict(record).filter == "two"


def test_a_verdict_is_computed_once_per_record() -> None:
    counting = Counting({"example.com/b:1"})
    catalog = _catalog(("c", counting))
    for _ in range(50):
        assert catalog.image_status(reference.parse("example.com/a:1")) is not None
        assert catalog.image_status(reference.parse("example.com/b:1")) is None
        assert len(catalog.list_images()) == 1
    assert counting.checks == 2


def test_with_no_filters_nothing_is_judged() -> None:
    catalog = _catalog()
    assert catalog.filters is None
    answer = catalog.image_status(reference.parse("example.com/a:1"))
    assert answer is not None
    assert all(isinstance(key, str) for key in answer.record.cache)


def test_two_chains_keep_their_own_verdicts() -> None:
    record = _record("a", 1)
    hide = FilterChain([FilterHandle("h", "t", Counting({"example.com/a:1"}))])
    keep = FilterChain([FilterHandle("k", "t", Counting())])
    assert hide.verdict(record).hidden
    assert not keep.verdict(record).hidden


class Raising:
    def check(self, record: ImageRecord) -> Verdict:
        raise RuntimeError("filter bug")


class ReturnsNone:
    def check(self, record: ImageRecord) -> Verdict:
        return None  # type: ignore[return-value]


@pytest.mark.parametrize("broken", [Raising(), ReturnsNone()], ids=["raises", "returns-none"])
def test_a_failing_filter_hides_the_image_and_is_logged_once(
    broken: Any, caplog: pytest.LogCaptureFixture
) -> None:
    catalog = _catalog(("broken", broken))
    with caplog.at_level(logging.ERROR, logger="crishim.catalog"):
        for _ in range(3):
            assert catalog.image_status(reference.parse("example.com/a:1")) is None
    failures = [r for r in caplog.records if "filter broken failed" in r.getMessage()]
    assert len(failures) == 1


def test_hidden_ids_do_not_make_a_prefix_ambiguous() -> None:
    shown, hidden = _record("a", 0xABC1), _record("b", 0xABC2)
    catalog = _catalog(("c", Counting({"example.com/b:1"})), records=[shown, hidden])
    prefix = shown.id.removeprefix("sha256:")[:62]
    answer = catalog.image_status(reference.parse(prefix))
    assert answer is not None and answer.record.id == shown.id
    assert catalog.image_status(reference.parse(hidden.id)) is None


class PullsHidden(Records):
    def pull_image(self, request: PullRequest) -> ImageRecord:
        return _record("b", 2)


def test_a_pulled_image_that_a_filter_hides_fails_the_pull() -> None:
    puller = PullsHidden([])
    catalog = Catalog(
        [BackendHandle("p", "pulls", puller)],
        filters=[FilterHandle("c", "t", Counting({"example.com/b:1"}, "not for the CRI"))],
    )
    with pytest.raises(NotSupported, match="not for the CRI"):
        catalog.pull_image(PullRequest(ref=reference.parse("example.com/b:1")))


def test_the_index_still_holds_what_filters_hide() -> None:
    index = ImageIndex([_record("a", 1)])
    assert index.get(reference.parse("example.com/a:1")) is not None


# --------------------------------------------------------------------------- the embedded-filter


def _oci_record(config: dict[str, Any] | None, **fields: Any) -> ImageRecord:
    data = canonical_json(config) if config is not None else b""
    image_id = "sha256:" + hashlib.sha256(data or b"x").hexdigest()
    return ImageRecord(**{"id": image_id, "config": data, **fields})


def _problem(record: ImageRecord, **options: Any) -> str | None:
    context = FilterContext("e", Path("/"))
    return EmbeddedFilter(context, EmbeddedFilterOptions(**options)).problem(record)


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (_oci_record(_config(), manifest_media_type=EMBEDDED_MANIFEST), "embedded image"),
        (
            _oci_record(
                None,
                manifest_media_type="application/vnd.docker.distribution.manifest.v1+prettyjws",
            ),
            "schema 1",
        ),
        (_oci_record(_config(), manifest_media_type="application/x-other"), "media type"),
        (ImageRecord(id="sha256:short", config=canonical_json(_config())), "not a config digest"),
        (_oci_record(None), "no image config"),
        (ImageRecord(id="sha256:" + "0" * 64, config=canonical_json(_config())), "does not match"),
        (_oci_record([1, 2]), "not a JSON object"),  # type: ignore[arg-type]
        *[
            (_oci_record(param.values[0]), param.values[1])
            for param in NONCOMPLIANT
            if isinstance(param.values[0], dict)
        ],
    ],
)
def test_embedded_filter_rules(record: ImageRecord, reason: str) -> None:
    problem = _problem(record)
    assert problem is not None and reason in problem


def test_embedded_filter_passes_compliant_images() -> None:
    assert _problem(_oci_record(_config(), manifest_media_type=OCI_MANIFEST)) is None
    assert _problem(_oci_record(_config(rootfs={"type": "layers", "diff_ids": []}))) is None
    assert _problem(_oci_record(None), require_config=False) is None


def test_embedded_filter_lists_hidden_images_only_when_asked() -> None:
    record = _oci_record(None, manifest_media_type=EMBEDDED_MANIFEST)
    context = FilterContext("e", Path("/"))
    assert not EmbeddedFilter(context, EmbeddedFilterOptions()).check(record).listed
    listed = EmbeddedFilter(context, EmbeddedFilterOptions(list_hidden=True)).check(record)
    assert listed.hidden and listed.listed


# --------------------------------------------------------------------------- config


def _filters(data: dict[str, Any]) -> list[FilterHandle]:
    settings = parse_settings({"backends": [{"name": "a", "type": "oci-dir"}], **data})
    return build_filters(settings, load_plugins())


def test_default_chain_is_the_embedded_filter_without_require_config() -> None:
    (handle,) = _filters({})
    assert (handle.name, handle.type) == ("embedded-filter", "embedded-filter")
    assert isinstance(handle.filter, EmbeddedFilter)
    assert handle.filter.options == EmbeddedFilterOptions(require_config=False)


def test_empty_filters_list_means_no_filters() -> None:
    assert _filters({"filters": []}) == []


def test_configured_filters_keep_their_order_and_skip_disabled_ones() -> None:
    handles = _filters(
        {
            "filters": [
                {"name": "second", "type": "embedded-filter", "options": {"list_hidden": True}},
                {"name": "off", "type": "embedded-filter", "enabled": False},
                {"name": "first", "type": "embedded-filter"},
            ]
        }
    )
    assert [h.name for h in handles] == ["second", "first"]
    assert isinstance(handles[1].filter, EmbeddedFilter)
    assert handles[1].filter.options.require_config


@pytest.mark.parametrize(
    ("filters", "key", "reason"),
    [
        ([{"name": "x", "type": "nope"}], "filters[0].type", "unknown filter type 'nope'"),
        (
            [{"name": "x", "type": "embedded-filter", "options": {"list_hiden": True}}],
            "filters[0].options.list_hiden",
            "unknown key",
        ),
        (
            [{"name": "x", "type": "embedded-filter"}, {"name": "x", "type": "embedded-filter"}],
            "filters",
            "used twice",
        ),
        ([{"name": "Bad Name", "type": "embedded-filter"}], "filters[0].name", "a-z"),
        ([{"type": "embedded-filter"}], "filters[0].name", "required key is missing"),
    ],
)
def test_filter_config_errors_name_the_key(
    filters: list[dict[str, Any]], key: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as info:
        _filters({"filters": filters})
    assert any(k == key and reason in r for k, r in info.value.problems), info.value.problems


def test_disabling_the_plugin_empties_the_default_chain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DISABLE_ENV, "embedded-filter")
    settings = parse_settings({"backends": [{"name": "a", "type": "oci-dir"}]})
    assert build_filters(settings, load_plugins()) == []


def test_a_third_party_filter_type_is_found_and_configured(tmp_path: Path) -> None:
    class NoLatest:
        def __init__(self, context: FilterContext, options: Any) -> None:
            self.name = context.name

        def check(self, record: ImageRecord) -> Verdict:
            if any(t.endswith(":latest") for t in record.repo_tags):
                return Verdict(hidden=True, reason="tagged latest")
            return VISIBLE

    class Plugin:
        @hookimpl
        def crishim_filter_types(self) -> list[FilterType]:
            return [FilterType(name="no-latest", factory=NoLatest)]

    b = LayoutBuilder(tmp_path / "layout")
    latest, pinned = b.image(name="latest"), b.image(name="pinned")
    b.tag(latest, "example.com/app:latest")
    b.tag(pinned, "example.com/app:1")
    b.write()
    config = {
        **make_config(backend("a", b.root)),
        "filters": [{"name": "no-latest", "type": "no-latest"}, *STRICT],
    }
    with running_server(config, extra_plugins=[("no-latest", Plugin())]) as shim:
        assert [i.id for i in shim.list()] == [pinned.id]
        assert not shim.status("example.com/app:latest").HasField("image")
        assert shim.status("example.com/app:1").image.id == pinned.id


def test_an_unknown_filter_type_stops_start_up(tmp_path: Path) -> None:
    settings = parse_settings(
        {**make_config(backend("a", str(tmp_path))), "filters": [{"name": "x", "type": "nope"}]}
    )
    with pytest.raises(ConfigError, match=r"filters\[0\]\.type: unknown filter type"):
        make_application(settings).catalog()


def test_ids_are_status_codes_not_crashes(crishim_server: Server, oci_layout: Layouts) -> None:
    """Hidden images never turn into errors: every call on them is OK."""
    b = oci_layout()
    _, embedded_id = _layout_with_embedded(b)
    shim = _serve(crishim_server, b)
    for call in (shim.status, shim.remove, shim.list):
        try:
            call(embedded_id)
        except grpc.RpcError as exc:  # pragma: no cover - the failure message
            pytest.fail(f"{call.__name__}({embedded_id}) failed: {exc.code()}")
