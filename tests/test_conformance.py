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

pytest_plugins = ["pytester"]


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
            images=[ExpectedImage(id=record.id, repo_tags=record.repo_tags, size=record.size)],
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


# ------------------------------------------------------------------- setups pair with teardowns

PAIRS_MODULE = """
from pathlib import Path

from crishim.testing.conformance import ContractSetup, CriContract, ExpectedImage
from crishim.testing.ocibuild import LayoutBuilder

LOG = Path(__file__).with_name("pairs.log")


class TestPairs(CriContract):
    removable = True

    def cri_setup(self, root):
        builder = LayoutBuilder(root / "layout")
        images = []
        for name, user in (("one", "1000"), ("two", "www-data")):
            image = builder.image(user=user, name=name)
            builder.tag(image, f"example.com/{name}:1")
            images.append(
                ExpectedImage(
                    id=image.id,
                    repo_tags=[f"example.com/{name}:1"],
                    repo_digests=[f"example.com/{name}@{image.manifest.digest}"],
                    # wrong on purpose for "two": one check fails, teardowns still run
                    user=user if name == "one" else "1000",
                    size=image.size,
                )
            )
        builder.write()
        with LOG.open("a") as log:
            log.write(f"setup {root}\\n")
        return ContractSetup(
            backends=[{"name": "b", "type": "oci-dir", "options": {"path": str(root / "layout")}}],
            images=images,
            config={"platform": {"os": "linux", "architecture": "amd64"}},
        )

    def cri_teardown(self, setup):
        root = Path(setup.backends[0]["options"]["path"]).parent
        with LOG.open("a") as log:
            log.write(f"teardown {root}\\n")
"""


def test_every_setup_the_kit_makes_is_torn_down_once_after_its_server(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_pairs=PAIRS_MODULE)
    recorder = pytester.inline_run("-p", "no:cacheprovider", "-q")
    failed = {r.nodeid.rpartition("::")[2] for r in recorder.listoutcomes()[2]}
    assert failed == {"test_uid_and_username_follow_the_cri_rules"}
    events = [line.split(" ", 1) for line in (pytester.path / "pairs.log").read_text().splitlines()]
    setups = [root for what, root in events if what == "setup"]
    # the class's shared server, then one fresh server per removal test
    assert len(setups) == 3 and len(set(setups)) == 3, events
    for root in setups:
        assert [what for what, r in events if r == root] == ["setup", "teardown"], events
    # the fresh servers come and go while the shared one lives on
    assert events[0] == ["setup", setups[0]] and events[-1] == ["teardown", setups[0]]
