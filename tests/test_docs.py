"""The plugin contract stays documented and tested (as datasette's test_docs does).

Fails when a hook has no docstring or no example, when docs/hooks.md or
docs/api-reference.md is not what its generator writes, when a public name
has no entry, docstring or example (or a public-looking name is outside its
module's ``__all__``), when docs/api.md names something that does not
exist, when a hook is named by no test, when the plugin guide forgets a
hook or a config key, when a documented example does not compile (or, as a
doctest, does not give what it shows), or when a relative link is dead.
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PLUGINS_MD = DOCS / "plugins.md"
HOOKS_MD = DOCS / "hooks.md"
API_MD = DOCS / "api.md"
API_REFERENCE_MD = DOCS / "api-reference.md"


def _load_generator(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / f"scripts/{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


GEN = _load_generator("gen_hook_docs")
API = _load_generator("gen_api_docs")
PUBLIC: list[tuple[str, str]] = [
    (module, name) for module, _ in API.MODULES for name in API.public_names(module)
]
HOOKS: list[tuple[str, Any]] = GEN.hookspecs()
HOOK_NAMES = [name for name, _ in HOOKS]


def test_there_are_hooks() -> None:
    assert {"crishim_backend_types", "crishim_filter_types"} <= set(HOOK_NAMES)


@pytest.mark.parametrize("name", HOOK_NAMES)
def test_every_hook_has_a_docstring_and_an_example(name: str) -> None:
    fn = dict(HOOKS)[name]
    description, example = GEN.split_docstring(fn.__doc__ or "")
    assert len(description) > 40, f"{name} has no real docstring"
    assert example, f"{name} has no 'Example::' block"
    assert "@hookimpl" in example, f"{name}'s example does not implement the hook"
    assert f"def {name}(" in example, f"{name}'s example does not define {name}"
    compile(example, f"<{name} example>", "exec")


def test_hooks_md_is_what_the_generator_writes() -> None:
    assert HOOKS_MD.read_text() == GEN.render(), (
        "docs/hooks.md is stale: run .venv/bin/python scripts/gen_hook_docs.py"
    )


def test_api_reference_is_what_the_generator_writes() -> None:
    assert API_REFERENCE_MD.read_text() == API.render(), (
        "docs/api-reference.md is stale: run .venv/bin/python scripts/gen_api_docs.py"
    )


@pytest.mark.parametrize("module", [m for m, _ in API.MODULES])
def test_a_public_module_offers_exactly_its_all(module: str) -> None:
    """A public-looking name outside ``__all__`` would have no entry in the reference."""
    loaded = importlib.import_module(module)
    offered = getattr(loaded, "__all__", None)
    assert offered is not None, f"{module} has no __all__"
    for name in offered:
        assert hasattr(loaded, name), f"{module}.__all__ names {name}, which does not exist"
    internal = API.INTERNAL.get(module, frozenset())
    missing = set(API.defined_names(module)) - set(offered) - internal
    assert not missing, (
        f"{module} defines {sorted(missing)} outside __all__: add them (with a docstring and "
        "an example) or make them private, then rerun scripts/gen_api_docs.py"
    )


@pytest.mark.parametrize(("module", "name"), PUBLIC, ids=[f"{m}.{n}" for m, n in PUBLIC])
def test_every_public_name_has_its_entry(module: str, name: str) -> None:
    assert f"### `{module}.{name}`" in API_REFERENCE_MD.read_text()
    kind = API.kind_of(module, name)
    doc = API.docstring_of(module, name)
    assert doc.strip(), f"{module}.{name} has no docstring (or #: comment)"
    if kind in ("constant", "exception"):
        return
    example = API.example_of(module, name)
    assert example, f"{module}.{name} ({kind}) has no 'Example::' block"
    if example.lstrip().startswith(">>>"):
        test = doctest.DocTestParser().get_doctest(
            example, dict(vars(importlib.import_module(module))), f"{module}.{name}", None, 0
        )
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
        runner.run(test, out=lambda text: None)
        assert runner.summarize(verbose=False).failed == 0, f"{module}.{name}'s example fails"
    else:
        compile(example, f"<{module}.{name} example>", "exec")


def test_every_error_says_the_status_it_becomes() -> None:
    from crishim import errors
    from crishim.service import status_for

    for name in errors.__all__:
        cls = getattr(errors, name)
        code = status_for(cls.__new__(cls)).name
        assert f"({code})" in (cls.__doc__ or ""), f"{name}'s docstring does not say ({code})"


def _api_rows(section: str = "") -> list[tuple[str, str]]:
    """(module, second cell) of the table rows of docs/api.md whose first cell is a module.

    ``section``: only the rows under the heading starting with it.
    """
    text = API_MD.read_text()
    if section:
        text = text.split(f"\n## {section}", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and re.fullmatch(r"`[a-z_.0-9]+`(, `[a-z_.0-9]+`)*", cells[0]):
            for module in re.findall(r"`([a-z_.0-9]+)`", cells[0]):
                rows.append((module, cells[1]))
    return rows


#: Modules whose docs/api.md row lists the stable names (the rest is internal).
BUILDING_BLOCKS = (
    "crishim.registry.client",
    "crishim.registry.puller",
    "crishim.registry.options",
    "crishim.oci.store",
    "crishim.oci.spec",
    "crishim.oci.resolve",
    "crishim.oci.layout",
    "crishim.config",
    "crishim.manager",
)


def test_the_public_api_page_lists_the_reference_modules_and_real_names() -> None:
    rows = _api_rows()
    listed = {module for module, _ in rows}
    assert {m for m, _ in API.MODULES} <= listed
    assert set(BUILDING_BLOCKS) <= listed
    for module, _ in rows:
        importlib.import_module(module)  # every module named exists
    blocks = _api_rows("Stable: building blocks")
    assert {m for m, _ in blocks} == set(BUILDING_BLOCKS)
    for module, cell in blocks:
        loaded = importlib.import_module(module)
        names = re.findall(r"`([A-Za-z_][A-Za-z_0-9]*)`", cell.split(";")[0])
        assert names, module
        for name in names:
            assert hasattr(loaded, name), f"docs/api.md: {module}.{name} does not exist"


def _test_sources() -> dict[Path, str]:
    """Test files that could exercise a hook (this file only lists them)."""
    files = [*ROOT.joinpath("tests").rglob("*.py"), *ROOT.joinpath("examples").rglob("test_*.py")]
    return {p: p.read_text() for p in files if p.resolve() != Path(__file__).resolve()}


@pytest.mark.parametrize("name", HOOK_NAMES)
def test_every_hook_is_implemented_by_a_test(name: str) -> None:
    implementing = [
        p.relative_to(ROOT)
        for p, text in _test_sources().items()
        if re.search(rf"def {name}\(", text) and p.name.startswith("test_")
    ]
    assert implementing, f"no test file implements hook {name}"


@pytest.mark.parametrize("name", HOOK_NAMES)
def test_every_hook_is_in_the_plugin_guide(name: str) -> None:
    assert f"`{name}`" in PLUGINS_MD.read_text(), f"docs/plugins.md does not mention {name}"


@pytest.mark.parametrize(
    "term",
    [
        "backends[].timeout",
        "filters",
        "fail_on_backend_error",
        "plugins.disabled",
        "plugins.strict",
        "CRISHIM_DISABLE_PLUGINS",
        "--strict-plugins",
        "list_hidden",
        "require_config",
        "application/embedded.manifest+json",
        "CriContract",
        "crishim.plugins",
    ],
)
def test_the_plugin_guide_covers(term: str) -> None:
    assert term in PLUGINS_MD.read_text()


def test_the_embedded_filter_rules_are_the_documented_ones() -> None:
    """The numbered rules in docs/plugins.md and in the filter's docstring agree."""
    from crishim_plugins.embedded_filter import filter as embedded

    def rules(text: str) -> list[str]:
        return re.findall(r"^\s*(\d+)\. ", text, flags=re.MULTILINE)

    guide = PLUGINS_MD.read_text().split("## The embedded-filter", 1)[1]
    assert rules(guide) == rules(embedded.__doc__ or "") == [str(i) for i in range(1, 12)]


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


@pytest.mark.parametrize("doc", [PLUGINS_MD, HOOKS_MD, API_REFERENCE_MD], ids=lambda p: p.name)
def test_python_examples_compile(doc: Path) -> None:
    blocks = _python_blocks(doc.read_text())
    assert blocks
    for i, block in enumerate(blocks):
        if block.lstrip().startswith("def ") and block.strip().count("\n") == 0:
            continue  # a signature line
        compile(block, f"{doc.name} block {i}", "exec")


@pytest.mark.parametrize(
    "doc",
    [
        PLUGINS_MD,
        HOOKS_MD,
        API_MD,
        API_REFERENCE_MD,
        ROOT / "examples/crishim-docker-archive/README.md",
        ROOT / "examples/crishim-json-catalog/README.md",
    ],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_relative_links_resolve(doc: Path) -> None:
    text = doc.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        linked = doc.parent / path if path else doc
        assert linked.exists(), f"{doc.name}: dead link {target}"
        if anchor and linked.suffix == ".md":
            assert anchor in _anchors(linked), f"{doc.name}: no heading for {target}"


def _anchors(doc: Path) -> set[str]:
    return {
        re.sub(r"[^a-z0-9 _-]", "", h.lower()).replace(" ", "-")
        for h in re.findall(r"^#+ (.*)$", doc.read_text(), flags=re.MULTILINE)
    }


def test_readme_points_to_the_plugin_docs() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "docs/plugins.md" in readme
    assert "docs/hooks.md" in readme


def test_the_quick_start_is_two_commands_installing_what_ci_installs() -> None:
    """Every example plugin (whose tests are in the suite) is installed by both."""
    quick = (ROOT / "README.md").read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    # the first two blocks, one line each (crictl examples may follow)
    commands = re.findall(r"```sh\n(.*?)```", quick, flags=re.DOTALL)[:2]
    assert [c.count("\n") for c in commands] == [1, 1], commands
    readme_install = re.search(r"pip install (.*?) &&", commands[0])
    ci_install = re.search(
        r"pip install --quiet (?:-c \S+ )?(-e .*)", (ROOT / ".ci/run").read_text()
    )
    assert readme_install is not None and ci_install is not None
    assert readme_install[1].split() == ci_install[1].split()
    for example in sorted(ROOT.glob("examples/*/pyproject.toml")):
        assert f"examples/{example.parent.name}" in readme_install[1].split(), example


def test_examples_in_the_docs_are_ruff_formatted() -> None:
    """CI's ``ruff format --check .`` formats Python blocks in Markdown too."""
    ruff = Path(sys.executable).with_name("ruff")
    if not ruff.exists():
        pytest.skip("ruff is not installed next to this Python")
    result = subprocess.run(
        [str(ruff), "format", "--check", str(PLUGINS_MD), str(HOOKS_MD), str(API_REFERENCE_MD)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


IMAGE_STATUS_MD = DOCS / "image-status.md"


def _documented_verbose_keys() -> set[str]:
    """The keys of the table under ``## verbose`` in docs/image-status.md."""
    section = IMAGE_STATUS_MD.read_text().split("\n## verbose\n", 1)[1].split("\n## ", 1)[0]
    keys: set[str] = set()
    for first_cell in re.findall(r"^\| ([^|]*`[^|]*) \|", section, flags=re.MULTILINE):
        keys.update(re.findall(r"`([^`]+)`", first_cell))
    return keys


def test_verbose_info_holds_exactly_the_documented_keys(tmp_path: Path) -> None:
    """Every documented key is in every verbose answer (image, artifact, config-less), no other."""
    import json

    from crishim.cri.runtime.v1 import api_pb2
    from crishim.testing.embedded import add_embedded_image
    from crishim.testing.ocibuild import CONTAINERD_NAME, LayoutBuilder
    from crishim.testing.server import running_server

    documented = _documented_verbose_keys()
    assert {"imageSpec", "chainID", "backend", "extra", "artifactType"} <= documented
    images = LayoutBuilder(tmp_path / "images")
    image = images.image(name="documented", user="1000")
    images.tag(image, "example.com/documented:1")
    embedded = add_embedded_image(images, "example.com/embedded:1")
    images.write()
    store = LayoutBuilder(tmp_path / "store")
    artifact = store.artifact({"file.txt": "an artifact\n"})
    store.tag(artifact, "example.com/artifact:1", key=CONTAINERD_NAME)
    store.write()
    config = {
        "filters": [],  # so the config-less (embedded) image is answered too
        "backends": [
            {"name": "dir", "type": "oci-dir", "options": {"path": str(images.root)}},
            {"name": "cache", "type": "registry-cache", "options": {"path": str(store.root)}},
        ],
    }
    with running_server(config) as shim:
        for ref in (image.id, embedded.digest, artifact.id):
            request = api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=ref), verbose=True)
            response = shim.images.ImageStatus(request, timeout=30)
            assert response.HasField("image"), ref
            assert list(response.info) == ["info"]
            info = json.loads(response.info["info"])
            assert set(info) == documented, (ref, set(info) ^ documented)
            assert isinstance(info["extra"], dict)
