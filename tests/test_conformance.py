"""The built-in oci-dir backend passes the CRI contract kit (crishim.testing.conformance).

The layouts hold the standard images plus an embedded (iSulad) image that
the default filter chain must keep from the CRI.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    PLATFORM,
    STANDARD_TAGS,
    backend,
    build_standard_layout,
    standard_digests,
)

from crishim import hookimpl
from crishim.model import ImageRecord
from crishim.reference import Reference, RefKind
from crishim.testing.conformance import ContractSetup, CriContract, ExpectedImage
from crishim.testing.embedded import add_embedded_image
from crishim.testing.ocibuild import LayoutBuilder, canonical_json
from crishim.types import BackendContext, BackendType, IndexedBackend

USERS = {
    "busybox": "",
    "app": "1002",
    "registry": "1003:1004",
    "web": "www-data",
    "web_group": "www-data:1004",
    "nameless": "",
    "multi": "",
}
EMBEDDED = "example.com/embedded/app:1.0"


def standard_setup(root: Path, *, filters: Any = None, **options: Any) -> ContractSetup:
    """The standard layout plus an embedded image, served by one oci-dir backend."""
    std = build_standard_layout(root)
    extra = LayoutBuilder(root)
    add_embedded_image(extra, EMBEDDED)
    index = json.loads((root / "index.json").read_bytes())
    index["manifests"].extend(extra.entries)
    (root / "index.json").write_bytes(canonical_json(index))
    digests = standard_digests(std)
    images = [
        ExpectedImage(
            id=image.id,
            repo_tags=STANDARD_TAGS[name],
            repo_digests=digests[name],
            user=USERS[name],
            size=image.size,
        )
        for name, image in std.served().items()
    ]
    config: dict[str, Any] = {"platform": PLATFORM}
    if filters is not None:
        config["filters"] = filters
    return ContractSetup(
        backends=[backend("std", root, **options)],
        images=images,
        hidden=[EMBEDDED],
        config=config,
    )


class TestOciDir(CriContract):
    removable = True

    def cri_setup(self, root: Path) -> ContractSetup:
        return standard_setup(root)


class TestOciDirReadOnly(CriContract):
    removable = False

    def cri_setup(self, root: Path) -> ContractSetup:
        return standard_setup(root, read_only=True)


class TestOciDirStrictEmbeddedFilter(CriContract):
    """The embedded-filter configured explicitly, with its strict defaults."""

    removable = True

    def cri_setup(self, root: Path) -> ContractSetup:
        return standard_setup(root, filters=[{"name": "oci-only", "type": "embedded-filter"}])


# --------------------------------------------------------------------------- the kit catches faults


class SloppyBackend(IndexedBackend):
    """Breaks the contract on purpose: answers every name, forgets names by tag."""

    record = ImageRecord(
        id="sha256:" + "ab" * 32,
        repo_tags=("example.com/sloppy:1", "example.com/sloppy:2"),
        config=b"",
    )

    def __init__(self, context: BackendContext, options: Any) -> None:
        super().__init__(context)

    def start(self) -> None:
        self.publish([self.record])

    def get_image(self, ref: Reference) -> ImageRecord | None:
        if ref.kind is RefKind.NAME:  # any name, with only the first tag
            return replace(self.record, repo_tags=self.record.repo_tags[:1])
        return super().get_image(ref)


class SloppyPlugin:
    @hookimpl
    def crishim_backend_types(self) -> list[BackendType]:
        return [BackendType("sloppy", SloppyBackend)]


class SloppyContract(CriContract):
    """Not collected (no Test prefix): run by hand below."""

    def cri_setup(self, root: Path) -> ContractSetup:
        record = SloppyBackend.record
        return ContractSetup(
            backends=[{"name": "sloppy", "type": "sloppy"}],
            images=[ExpectedImage(id=record.id, repo_tags=record.repo_tags)],
            config={"filters": []},
            extra_plugins=[("sloppy", SloppyPlugin())],
        )


@pytest.mark.parametrize(
    ("check", "message"),
    [
        ("test_absent_image_is_nil", "must answer image unset"),
        ("test_every_name_answers_the_same_image", "answers otherwise"),
        ("test_list_filter_names_one_image", ""),
    ],
)
def test_the_kit_fails_a_backend_that_breaks_the_contract(
    tmp_path: Path, check: str, message: str
) -> None:
    kit = SloppyContract()
    with (
        contextlib.contextmanager(kit._serve)(tmp_path) as run,
        pytest.raises(AssertionError) as info,
    ):
        getattr(kit, check)(run)
    assert message in str(info.value)


class _Recording(CriContract):
    """A kit subclass that records its setup and teardown calls (not collected)."""

    def __init__(self, backends: list[dict[str, Any]]) -> None:
        self.backends = backends
        self.calls: list[str] = []

    def cri_setup(self, root: Path) -> ContractSetup:
        self.calls.append("setup")
        return ContractSetup(backends=self.backends, images=[])

    def cri_teardown(self, setup: ContractSetup) -> None:
        assert setup.backends == self.backends
        self.calls.append("teardown")


def test_the_kit_tears_down_every_setup_after_the_server(tmp_path: Path) -> None:
    layout = LayoutBuilder(tmp_path / "layout").write()
    kit = _Recording([backend("b", layout)])
    run = kit._serve(tmp_path / "one")
    started = next(run)
    assert kit.calls == ["setup"]
    assert started.shim.list() == []
    with contextlib.suppress(StopIteration):
        next(run)
    assert kit.calls == ["setup", "teardown"]
    # a server that cannot start still gets its teardown
    broken = _Recording([{"name": "b", "type": "no-such-type"}])
    with pytest.raises(Exception, match="no-such-type"):
        next(broken._serve(tmp_path / "two"))
    assert broken.calls == ["setup", "teardown"]
